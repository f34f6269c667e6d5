"""``python -m trionet`` runs the ``trionet`` command."""

from trionet.cli import main

main()
