"""The ``mtprun`` command line (Typer + Rich). Only this package imports Rich."""
