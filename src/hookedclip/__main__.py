"""``python -m hookedclip``: the ``hookedclip`` command (an entry point, run and never imported,
so it sits with the command line in the import rule)."""

import sys

from hookedclip.cli import main

sys.exit(main())
