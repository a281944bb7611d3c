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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..chat import THINK_CLOSE, THINK_OPEN, ReasoningSplitter
from ..events import Segment

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


# Styles of a streamed reply: accepted MTP drafts in cyan (as llama.cpp's speculative example
# colours them), reasoning dimmed.
STYLE_DRAFT = "cyan"
STYLE_REASONING = "dim"
STYLE_REASONING_DRAFT = "dim cyan"
STYLE_LABEL = "dim italic"
REASONING_START = "[Start thinking]"
REASONING_END = "[End thinking]"


class Output:
    """Renders everything a command shows; commands never print directly.

    ``color``: True forces colour (and terminal rendering), False turns every style off, None
    decides per stream (a terminal without ``NO_COLOR``). ``stdout``/``stderr`` default to the
    process's streams at construction time. ``terminal``: treat both streams as terminals (True) or
    not (False) whatever they are; None asks the streams (for tests and embedding).
    """

    def __init__(
        self, *, color: bool | None = None, verbose: bool = False, stdout: Any = None, stderr: Any = None,
        terminal: bool | None = None,
    ) -> None:
        kw: dict[str, Any] = {"highlight": False, "soft_wrap": True, "emoji": False, "markup": False}
        if terminal is not None:
            kw.update(force_terminal=terminal)
        if color is False:
            kw.update(no_color=True, color_system=None)
        elif color is True:
            kw.update(force_terminal=True)
        self.out = Console(file=stdout if stdout is not None else sys.stdout, **kw)
        self.err = Console(file=stderr if stderr is not None else sys.stderr, **kw)
        self.verbose = verbose

    @property
    def interactive(self) -> bool:
        """Whether stdout is a terminal (or colour was forced): replies are then rendered, not raw."""
        return self.out.is_terminal

    # --- stdout: the product -------------------------------------------------------------------
    def text(self, text: str, *, style: str | None = None, end: str = "") -> None:
        """Write untrusted text (e.g. model output) to stdout literally."""
        if style and self.out.color_system is not None:
            self.out.print(Text(sanitize(text), style=style), end=end)
        else:  # straight to the file: no wrapping, no tab expansion
            self.out.file.write(sanitize(text) + end)
        self.out.file.flush()

    def reply(self, *, starts_in_reasoning: bool = False, tags: tuple[str, str] | None = None) -> ReplyStream:
        """A renderer for one streamed reply on stdout (``tags``: the reasoning block's tags)."""
        return ReplyStream(self, starts_in_reasoning=starts_in_reasoning, tags=tags)

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

    def note(self, message: str) -> None:
        """A plain line on stderr (chat banners, help)."""
        self.err.print(Text(sanitize(message)))

    def stats_line(self, stats: Any, stop_reason: str | None = None, note: str | None = None) -> None:
        """The compact statistics line shown after a reply (stderr); ``note`` is appended."""
        line = format_stats_line(stats, stop_reason) + (f" | {note}" if note else "")
        self.err.print(Text(sanitize(line), style="dim"))

    def stats_table(self, stats: Any, stop_reason: str | None = None, *, title: str = "statistics") -> None:
        """The full statistics table (``/stats``, ``--verbose``) on stderr."""
        self.table(title, stats_rows(stats, stop_reason))

    def warn(self, message: str) -> None:
        self.err.print(Text("warning: ", style="yellow bold") + Text(sanitize(message)))

    def error(self, message: str) -> None:
        self.err.print(Text("error: ", style="red bold") + Text(sanitize(message)))

    def table(self, title: str, rows: list[tuple[str, str]], *, to_stdout: bool = False) -> None:
        table = Table(title=Text(sanitize(title)), show_header=False, box=None, pad_edge=False)
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
        table = Table(title=Text(sanitize(title)) if title else None, box=None, pad_edge=False, title_justify="left")
        for i, name in enumerate(columns):
            table.add_column(Text(sanitize(name), style="bold"), justify="right" if i in right else "left", overflow="fold")
        for row in rows:
            table.add_row(*(Text(sanitize(cell)) for cell in row))
        (self.out if to_stdout else self.err).print(table)

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[[int, int | None], None]]:
        """A byte progress bar on stderr (size, speed, ETA), shown only on a terminal; yields
        ``update(done, total)``."""
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

        bar = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
            console=self.err, disable=not self.err.is_terminal,
        )
        with bar:
            task = bar.add_task(sanitize(description), total=total)

            def update(done: int, new_total: int | None = None) -> None:
                bar.update(task, completed=done, total=new_total if new_total is not None else total)

            yield update

    @contextmanager
    def steps(self, description: str, total: int) -> Iterator[Callable[[int, str], None]]:
        """A progress bar over ``total`` steps on stderr (count, elapsed, ETA), shown only on a
        terminal; yields ``update(done, what)`` (``what``: the step under way)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[what]}", style="dim"),
            console=self.err, disable=not self.err.is_terminal, transient=True,
        )
        with bar:
            task = bar.add_task(sanitize(description), total=total, what="")

            def update(done: int, what: str = "") -> None:
                bar.update(task, completed=done, what=sanitize(what))

            yield update

    def bars(self, title: str, values: list[tuple[str, float, bool]], *, unit: str = "", width: int = 40,
             to_stdout: bool = False) -> None:
        """A horizontal bar chart: (label, value, highlighted) rows scaled to the largest value."""
        console = self.out if to_stdout else self.err
        top = max((v for _, v, _ in values if v == v and v > 0), default=0.0)
        label_w = max((len(sanitize(lbl)) for lbl, _, _ in values), default=0)
        console.print(Text(sanitize(title), style="bold"))
        for label, value, mark in values:
            n = int(round(width * value / top)) if top > 0 and value == value and value > 0 else 0
            line = Text(sanitize(label).rjust(label_w) + " ")
            line.append("█" * n, style="green bold" if mark else "cyan")
            line.append(" " * (width - n) + f" {value:.1f}{unit}" + ("  ← best" if mark else ""),
                        style="bold" if mark else "")
            console.print(line)


class ReplyStream:
    """Streams one reply to stdout as pieces arrive.

    On a terminal (``Output.interactive``) text from accepted MTP drafts is coloured, reasoning is
    dimmed and framed by ``[Start thinking]``/``[End thinking]`` in place of its tags. Otherwise
    the text is written exactly as generated (tags included), so pipes and files get the reply.
    Either way model text is sanitized: no markup or control sequence from the model takes effect.
    """

    def __init__(self, output: Output, *, starts_in_reasoning: bool = False, tags: tuple[str, str] | None = None) -> None:
        self._o = output
        self._pretty = output.interactive
        open_tag, close_tag = tags or (THINK_OPEN, THINK_CLOSE)
        self._split = ReasoningSplitter(in_reasoning=starts_in_reasoning, open_tag=open_tag, close_tag=close_tag)
        self._in_reasoning = starts_in_reasoning  # inside a reasoning block (its end not yet written)
        self._strip_newlines = False  # after [End thinking], drop the newlines the model put there
        self._last = "\n"
        self._started = False
        if starts_in_reasoning and self._pretty:
            self._label(REASONING_START + "\n")

    def piece(self, text: str, from_draft: bool = False) -> None:
        """Raw generated text: split into reasoning and answer here."""
        self.write(self._split.feed(text, from_draft))

    def end(self) -> None:
        """Flush held-back text and finish the line."""
        self.write(self._split.flush())
        if self._in_reasoning and self._pretty:
            self._label(("" if self._last == "\n" else "\n") + REASONING_END)
            self._last = "x"
        if self._last != "\n" and (self._pretty or self._started):
            self._o.out.file.write("\n")
            self._last = "\n"
        self._o.out.file.flush()

    def _label(self, text: str) -> None:
        self._o.out.print(Text(text, style=STYLE_LABEL), end="")
        self._last = text[-1:] or self._last
        self._started = True

    def write(self, segments: Iterable[Segment]) -> None:
        """Segments already split (a ``ChatSession``'s); don't mix with :meth:`piece`."""
        o = self._o
        for seg in segments:
            if seg.kind in ("open", "close"):
                self._in_reasoning = seg.kind == "open"
            if not self._pretty:
                o.out.file.write(sanitize(seg.text))
                self._last = seg.text[-1:] or self._last
                self._started = True
                continue
            if seg.kind == "open":
                self._label(("" if self._last == "\n" else "\n") + REASONING_START + "\n")
                continue
            if seg.kind == "close":
                self._label(("" if self._last == "\n" else "\n") + REASONING_END + "\n\n")
                self._strip_newlines = True
                continue
            text = seg.text
            if self._strip_newlines:
                text = text.lstrip("\n")
                if not text:
                    continue
                self._strip_newlines = False
            if seg.kind == "reasoning":
                style = STYLE_REASONING_DRAFT if seg.from_draft else STYLE_REASONING
            else:
                style = STYLE_DRAFT if seg.from_draft else ""
            o.out.print(Text(sanitize(text), style=style), end="")
            self._last = text[-1]
            self._started = True
        o.out.file.flush()


def human_count(n: int) -> str:
    """27_300_000_000 -> '27.3B'."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{suffix}"
    return str(n)


# --- statistics ----------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def format_stats_line(stats: Any, stop_reason: str | None = None) -> str:
    """``64 tokens, 112.3 tok/s | MTP 41/52 drafts accepted (79%), auto, mean draft 2.4, 1.82 tok/pass, by position 92% 65% | ...``."""
    parts = [f"{stats.n_generated} tokens, {stats.generation_tps:.1f} tok/s"]
    new = stats.n_prompt_tokens - stats.n_prompt_reused
    prompt = f"prompt {new} new tokens, {stats.prompt_tps:.1f} tok/s" if new > 0 else "prompt cached"
    if stats.mtp:
        # (positions never drafted, e.g. past what auto chose, are left out rather than shown as 0%)
        by_pos = " ".join(_pct(a) for a, d in zip(stats.acceptance_by_position, stats.drafted_by_position) if d) or "-"
        length = f"auto, mean draft {stats.mean_draft_length:.1f}" if stats.adaptive else f"draft {stats.n_max}"
        spec = (
            f"MTP {stats.n_accepted}/{stats.n_drafted} drafts accepted ({_pct(stats.acceptance)}), {length}, "
            f"{stats.tokens_per_pass:.2f} tok/pass, by position {by_pos}"
        )
    else:
        spec = "MTP off"
    tail = [] if stop_reason in (None, "eos") else [_STOP_WORDS.get(stop_reason, stop_reason)]
    return " | ".join([parts[0], spec, prompt, *tail])


_STOP_WORDS = {
    "length": "stopped: token limit (-n)",
    "context": "stopped: context full (-c)",
    "cancelled": "stopped: interrupted",
}


def stats_rows(stats: Any, stop_reason: str | None = None) -> list[tuple[str, str]]:
    """Every statistic as (label, value) rows."""
    rows = [
        ("prompt tokens", f"{stats.n_prompt_tokens} ({stats.n_prompt_reused} reused from the cache)"),
        ("prompt processing", f"{stats.prompt_seconds:.3f} s, {stats.prompt_tps:.1f} tok/s"),
        ("generated tokens", str(stats.n_generated)),
        ("generation", f"{stats.generation_seconds:.3f} s, {stats.generation_tps:.1f} tok/s"),
    ]
    if stop_reason is not None:
        rows.append(("stop reason", stop_reason))
    rows.append(("MTP speculation", "off" if not stats.mtp else f"on, draft length {stats.draft_label}"))
    if stats.mtp:
        rows += [
            ("drafted / accepted", f"{stats.n_drafted} / {stats.n_accepted} ({_pct(stats.acceptance)})"),
            ("target passes", f"{stats.n_target_passes} ({stats.tokens_per_pass:.2f} tokens per pass)"),
        ]
        for i, (d, a) in enumerate(zip(stats.drafted_by_position, stats.accepted_by_position), start=1):
            rows.append((f"  draft position {i}", f"{a}/{d} accepted ({_pct(a / d if d else 0.0)})"))
        steps = " ".join(f"{n}:{c}" for n, c in enumerate(stats.steps_by_draft_length) if c)
        rows.append(("steps by draft length", f"{steps or '-'} (mean {stats.mean_draft_length:.2f})"))
        if stats.policy is not None:
            pol = stats.policy
            rows += [
                ("policy: acceptance", " ".join(_pct(a) for a in pol.acceptance_by_position)),
                ("policy: target ms", " ".join(f"{k}:{1e3 * t:.2f}" for k, t in enumerate(pol.target_seconds_by_batch, start=1))),
                ("policy: head ms", f"{1e3 * pol.head_seconds:.2f} per draft token"),
                ("policy: per-token ms", f"{1e3 * pol.token_seconds:.3f} (choosing it, handing it on)"),
            ]
    else:
        rows.append(("target passes", str(stats.n_target_passes)))
    total = stats.generation_seconds
    for name, secs in (
        ("draft time", stats.draft_seconds),
        ("verify time", stats.verify_seconds),
        ("sample time", stats.sample_seconds),
        ("other time", stats.overhead_seconds),
    ):
        rows.append((name, f"{secs:.3f} s ({_pct(secs / total if total > 0 else 0.0)})"))
    return rows
