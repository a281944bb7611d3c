"""``python -m mtprun``: the CLI."""

from .cli.app import main

main()
