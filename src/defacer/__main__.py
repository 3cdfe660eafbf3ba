"""``python -m defacer`` runs the ``defacer`` command."""

import sys

from defacer.cli.main import main

sys.exit(main())
