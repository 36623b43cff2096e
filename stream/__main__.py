"""``python -m stream`` runs the ``glmix`` command line."""

import sys

from stream.cli import main

sys.exit(main())
