"""``python -m voicegrid``: the same as the ``voicegrid`` command."""

import sys

from .cli import main

sys.exit(main())
