"""The one error boundary of the CLI: exceptions become one line on stderr and an exit code.

Exit codes (also listed in ``mtprun --help``):
  0 success, 1 other failure, 2 bad usage or option value, 3 model file problem,
  4 prompt longer than the context, 5 download / Hub failure, 130 interrupted,
  141 the reader of stdout went away (as SIGPIPE).
A full traceback is shown only with MTPRUN_DEBUG=1.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from ..errors import MtprunError

T = TypeVar("T")

EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 error, 2 bad usage or option value, 3 model file problem, "
    "4 prompt longer than the context, 5 download/Hub failure, 130 interrupted, 141 stdout closed by its reader."
)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def run_guarded(fn: Callable[[], T]) -> T:
    """Run a command body; map failures to a one-line message on stderr and an exit code."""
    import typer

    debug = os.environ.get("MTPRUN_DEBUG", "") not in ("", "0")
    try:
        return fn()
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except MtprunError as exc:
        if debug:
            raise
        _report(_one_line(str(exc)))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _report("interrupted")
        raise typer.Exit(130) from None
    except BrokenPipeError:
        # the reader of stdout went away (e.g. `| head`): quiet, with the status of a process
        # killed by SIGPIPE as coreutils report it
        from ._streams import EXIT_BROKEN_PIPE, silence_stdout

        silence_stdout()
        raise typer.Exit(EXIT_BROKEN_PIPE) from None
    except RecursionError:
        if debug:
            raise
        _report("input nested too deeply to process")
        raise typer.Exit(2) from None
    except MemoryError:
        if debug:
            raise
        _report("out of memory")
        raise typer.Exit(1) from None
    except OSError as exc:
        if debug:
            raise
        _report(_one_line(f"{exc.strerror or exc}" + (f": {str(exc.filename)[:200]}" if getattr(exc, "filename", None) else "")))
        raise typer.Exit(1) from None
    except Exception as exc:  # a bug: still one line, with a hint to get the traceback
        if debug:
            raise
        _report(_one_line(f"internal error: {type(exc).__name__}: {exc} (set MTPRUN_DEBUG=1 for the traceback)"))
        raise typer.Exit(1) from None


def _report(message: str) -> None:
    from .ui import Output

    Output().error(message)
