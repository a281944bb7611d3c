"""The ``mtprun`` command line (Typer + Rich). Only this package imports Rich.

Importing it installs a quiet Ctrl-C handler first (``mtprun.cli._streams.guard_startup``): the
command's modules take a few hundred milliseconds to import, and a Ctrl-C then must end the
process with exit code 130 and one line, not a ``KeyboardInterrupt`` traceback. ``main()``
restores Python's own handler before a command runs.
"""

from ._streams import guard_startup as _guard_startup

_guard_startup()
