"""``python -m rhlens ...``: the ``rhlens`` command."""

import sys

from .cli.main import main

sys.exit(main())
