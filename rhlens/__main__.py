"""``python -m rhlens ...``: the ``rhlens`` command."""

import sys

from .cli import main

sys.exit(main())
