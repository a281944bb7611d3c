"""Wires the ``mtprun`` commands together; each command lives in its own module."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

from .. import __version__
from . import bench as _bench
from . import chat as _chat
from . import download as _download
from . import graft as _graft
from . import info as _info
from . import run as _run
from ._errors import EXIT_CODES_HELP

app = typer.Typer(
    name="mtprun",
    help=f"Run local LLMs with Multi-Token Prediction (MTP) speculative decoding.\n\n{EXIT_CODES_HELP}",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("run", help=_run.HELP, no_args_is_help=False)(_run.run)
app.command("chat", help=_chat.HELP)(_chat.chat)
app.command("info", help=_info.HELP)(_info.info)
app.command("download")(_download.download)
app.command("graft", help=_graft.HELP)(_graft.graft)
app.command("bench", help=_bench.HELP)(_bench.bench)


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
    try:
        rv = app(args=list(argv) if argv is not None else None, prog_name="mtprun", standalone_mode=False)
    except typer.Abort:
        _one_line_error("aborted")
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
        sys.exit(code)
    return code


def _one_line_error(message: str) -> None:
    from .ui import Output

    Output().error(" ".join(message.split()))
