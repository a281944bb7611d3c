"""The one place that renders to the terminal (the only module that imports Rich).

``Output`` owns two consoles: stdout carries only what the user asked for (generated text, JSON),
stderr carries everything else (statistics, progress, warnings, errors), so
``mtprun run ... > out.txt`` and pipes get clean text. Untrusted text (model output, names read
from files or remote listings) is always printed literally: no Rich markup, no terminal control
sequences.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

# C0/C1 control characters except \n and \t; ESC starts terminal control sequences.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def human_size(n: int | None) -> str:
    """1234567 -> '1.2 MB' (decimal units, as the Hub shows them); None -> '?'."""
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def sanitize(text: str) -> str:
    """Make untrusted text safe to show on a terminal: control characters become visible escapes."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class Output:
    """Renders everything a command shows; commands never print directly."""

    def __init__(self, *, color: bool | None = None, verbose: bool = False) -> None:
        no_color = color is False
        force = True if color else None
        self.out = Console(file=sys.stdout, no_color=no_color, force_terminal=force, highlight=False, soft_wrap=True)
        self.err = Console(file=sys.stderr, no_color=no_color, force_terminal=force, highlight=False, soft_wrap=True)
        self.verbose = verbose

    # --- stdout: the product -------------------------------------------------------------------
    def text(self, text: str, *, style: str | None = None, end: str = "") -> None:
        """Write untrusted text (e.g. model output) to stdout literally."""
        self.out.print(Text(sanitize(text), style=style or ""), end=end)
        self.out.file.flush()

    def tsv(self, rows: list[tuple[str, ...]]) -> None:
        """Tab-separated lines on stdout (never wrapped, so `cut -f2` works); cells sanitized."""
        for row in rows:
            cells = (sanitize(c).replace("\t", "\\t").replace("\n", "\\n") for c in row)
            self.out.file.write("\t".join(cells) + "\n")
        self.out.file.flush()

    def json(self, obj: Any) -> None:
        self.out.file.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.out.file.flush()

    # --- stderr: everything else ---------------------------------------------------------------
    def info(self, message: str) -> None:
        self.err.print(Text(sanitize(message), style="dim"))

    def warn(self, message: str) -> None:
        self.err.print(Text("warning: ", style="yellow bold") + Text(sanitize(message)))

    def error(self, message: str) -> None:
        self.err.print(Text("error: ", style="red bold") + Text(sanitize(message)))

    def table(self, title: str, rows: list[tuple[str, str]], *, to_stdout: bool = False) -> None:
        table = Table(title=escape(title), show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        for key, value in rows:
            table.add_row(Text(sanitize(key)), Text(sanitize(value)))
        (self.out if to_stdout else self.err).print(table)

    def grid(
        self,
        title: str | None,
        columns: list[str],
        rows: list[list[str]],
        *,
        to_stdout: bool = False,
        right: tuple[int, ...] = (),
    ) -> None:
        """A table with a header row; every cell is untrusted text (printed literally)."""
        table = Table(title=escape(title) if title else None, box=None, pad_edge=False, title_justify="left")
        for i, name in enumerate(columns):
            table.add_column(Text(sanitize(name), style="bold"), justify="right" if i in right else "left", overflow="fold")
        for row in rows:
            table.add_row(*(Text(sanitize(cell)) for cell in row))
        (self.out if to_stdout else self.err).print(table)
