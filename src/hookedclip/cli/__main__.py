"""``python -m hookedclip.cli``: the ``hookedclip`` command."""

import sys

from hookedclip.cli import main

sys.exit(main())
