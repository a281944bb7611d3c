"""Wires the ``mtprun`` commands together; each command lives in its own module."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

from .._version import __version__
from . import bench as _bench
from . import chat as _chat
from . import download as _download
from . import graft as _graft
from . import info as _info
from . import run as _run
from ._errors import EXIT_CODES_HELP, guarded
from ._streams import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, fix_std_streams, release_startup, silence_stdout, stdout_is_devnull

app = typer.Typer(
    name="mtprun",
    help=f"Run local LLMs with Multi-Token Prediction (MTP) speculative decoding.\n\n{EXIT_CODES_HELP}",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# each command behind the one error boundary (library errors -> one line and an exit code)
app.command("run", help=_run.HELP, no_args_is_help=False)(guarded(_run.run))
app.command("chat", help=_chat.HELP)(guarded(_chat.chat))
app.command("info", help=_info.HELP)(guarded(_info.info))
app.command("download")(guarded(_download.download))
app.command("graft", help=_graft.HELP)(guarded(_graft.graft))
app.command("bench", help=_bench.HELP)(guarded(_bench.bench))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mtprun {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """Run local LLMs with Multi-Token Prediction (MTP) speculative decoding."""


def main(argv: Sequence[str] | None = None) -> int:
    """The ``mtprun`` entry point. Usage errors (unknown option, bad value) are one line on stderr, exit 2."""
    if argv is None:  # the real process (not a test calling main): its streams and Ctrl-C
        fix_std_streams()
        release_startup()
    try:
        rv = app(args=list(argv) if argv is not None else None, prog_name="mtprun", standalone_mode=False)
        if argv is None:
            sys.stdout.flush()  # a full disk or a closed reader shows here, not as noise at exit
    except typer.Abort:
        _one_line_error("aborted")
        return _exit(1, argv)
    except KeyboardInterrupt:
        _one_line_error("interrupted")
        return _exit(EXIT_INTERRUPTED, argv)
    except BrokenPipeError:
        silence_stdout()
        return _exit(EXIT_BROKEN_PIPE, argv)
    except SystemExit as exc:
        # Rich handles a broken pipe itself: it points stdout at /dev/null and exits with 1
        if exc.code == 1 and argv is None and stdout_is_devnull():
            return _exit(EXIT_BROKEN_PIPE, argv)
        raise
    except OSError as exc:  # writing help or usage to a full or closed stream
        if argv is None:
            silence_stdout()
        _one_line_error(f"{exc.strerror or exc}")
        return _exit(1, argv)
    except Exception as exc:
        # Click's usage errors (carried inside Typer) have format_message() and an exit_code
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `mtprun`: the help was shown
                return _exit(0, argv)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _one_line_error(exc.format_message() + hint)
            return _exit(exc.exit_code, argv)
        raise
    return _exit(rv if isinstance(rv, int) else 0, argv)


def _exit(code: int, argv: Sequence[str] | None) -> int:
    if argv is None:  # the console script: leave with the code
        # the work is done: a Ctrl-C now must not turn into a KeyboardInterrupt during shutdown
        # (Python then kills itself with SIGINT, and the caller sees a signal death, not `code`)
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.exit(code)
    return code


def _one_line_error(message: str) -> None:
    from .ui import Output

    Output().error(" ".join(message.split()))
