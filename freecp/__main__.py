"""``python -m freecp`` runs the command line."""

from freecp.cli import main

main()
