"""Wires the ``mtprun`` commands together; each command lives in its own module."""

from __future__ import annotations

import typer

from .. import __version__
from . import download

app = typer.Typer(
    name="mtprun",
    help="Run local LLMs with Multi-Token Prediction (MTP) speculative decoding.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mtprun {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """Run local LLMs with Multi-Token Prediction (MTP) speculative decoding."""


app.command("download")(download.download)


def main() -> None:
    app()
