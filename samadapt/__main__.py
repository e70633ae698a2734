"""``python -m samadapt``: the ``samadapt`` command."""

import sys

from .cli import main

sys.exit(main())
