"""The one error boundary of the CLI: exceptions become one line on stderr and an exit code.

Exit codes (also listed in ``mtprun --help``):
  0 success, 1 other failure, 2 bad usage or option value, 3 model file problem,
  4 prompt longer than the context, 5 download / Hub failure, 130 interrupted,
  141 the reader of stdout went away (as SIGPIPE).
A full traceback is shown only with MTPRUN_DEBUG=1.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TypeVar

from ..errors import ContextOverflowError, HubError, InvalidInputError, ModelError, MtprunError

T = TypeVar("T")

# the library's error classes, most specific first
EXIT_CODES: tuple[tuple[type[MtprunError], int], ...] = (
    (InvalidInputError, 2),
    (ModelError, 3),
    (ContextOverflowError, 4),
    (HubError, 5),
    (MtprunError, 1),
)

# the library arguments errors name (``MtprunError.option``), as the user typed them
FLAGS = {
    "model": "-m/--model",
    "draft": "-md/--model-draft",
    "source": "-m PATH, -hf OWNER/NAME[:QUANT] or --demo",
    "revision": "--revision and --offline",
    "template_kwargs": "--chat-template-kwargs",
    "template_file": "--chat-template-file",
    "replace": "--replace",
    "n_max": "--n-max",
    "offline": "--offline",
}
# what the CLI adds to an error about an option whose text does not name it
HINTS = {
    "template_file": "; give another with --chat-template-file FILE, or use --raw",
}


def exit_code(exc: MtprunError) -> int:
    return next(code for cls, code in EXIT_CODES if isinstance(exc, cls))


def message(exc: MtprunError) -> str:
    """The one line shown for a library error: its text with the flag it concerns."""
    text = str(exc)
    flag = FLAGS.get(exc.option or "")
    if exc.option == "source":
        return f"{text}: use {flag}" if text == "no model given" else _sources(text)
    if exc.option == "revision":
        return f"{flag} apply to -hf models only"
    if not flag:
        return text
    # library messages name the library's argument (first word, or `name`): the CLI says the flag
    if text.startswith(f"{exc.option} "):
        return flag + text[len(exc.option):]
    if f"`{exc.option}`" in text:
        return text.replace(f"`{exc.option}`", flag)
    if exc.option in HINTS:
        return text + HINTS[exc.option]
    return f"{flag}: {text}"


def _sources(text: str) -> str:
    """"give only one model source, not model and hf" -> "... not -m and -hf"."""
    names = {"model": "-m", "hf": "-hf", "demo": "--demo"}
    head, _, tail = text.partition(", not ")
    if not tail:
        return text
    return f"{head}, not " + " and ".join(names.get(w, w) for w in tail.split(" and "))

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
        _report(_one_line(message(exc)))
        raise typer.Exit(exit_code(exc)) from None
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


def guarded(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` behind the error boundary (applied where commands are registered); a command that
    returns a non-zero int exits with it."""
    import typer

    @functools.wraps(fn)
    def command(*args, **kwargs):
        rv = run_guarded(lambda: fn(*args, **kwargs))
        if isinstance(rv, int) and not isinstance(rv, bool) and rv:
            raise typer.Exit(rv)
        return rv

    return command


def _report(text: str) -> None:
    from .ui import Output

    Output().error(text)
