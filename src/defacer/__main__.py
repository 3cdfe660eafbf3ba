"""``python -m defacer`` runs the ``defacer`` command."""

from defacer.cli.main import run

run()
