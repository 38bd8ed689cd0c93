"""The spurious-feature tasks, now shared by every method: they live in
:mod:`hookedclip.data.spurious`; every name stays importable from here."""

from hookedclip.data.spurious import *  # noqa: F403
from hookedclip.data.spurious import __all__  # noqa: F401
