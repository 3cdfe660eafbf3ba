"""``python -m defacer`` runs the ``defacer`` command."""

from defacer.cli.entry import run

run()
