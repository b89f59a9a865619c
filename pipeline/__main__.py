"""``python -m pipeline`` runs the ``pie`` command."""

from .cli import main

main()
