"""``python -m mtprun``: the same as the ``mtprun`` command."""

from .cli.app import main

main()
