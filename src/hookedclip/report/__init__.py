"""HTML pages and the demo report, built on the methods (figures: :mod:`hookedclip.plotting`)."""
