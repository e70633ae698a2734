"""``python -m samadapt.cli``: the ``samadapt`` command (as ``python -m samadapt``)."""

import sys

from . import main

sys.exit(main())
