"""``mtprun chat``: interactive multi-turn chat with the model's own chat template.

The conversation stays in the engine's cache between turns; each turn only the new tokens are
processed. Ctrl-C stops the reply being generated (the engine is cancelled, the partial reply is
kept) and returns to the prompt; at the prompt it clears the line; Ctrl-D exits.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from ..errors import ChatTemplateError, ContextOverflowError, InvalidInputError
from ..session import ChatSession
from . import _options as o
from ._errors import EXIT_CODES_HELP
from ._model import load
from ._stream import chat_turn, open_session
from .ui import Output

HELP = f"""Interactive multi-turn chat with the model's own chat template.

Type a message and press Enter; end a line with \\ to continue the message on the next line. Commands: /help, /clear, /stats, /exit. Ctrl-C stops the reply being generated, Ctrl-D exits.

{EXIT_CODES_HELP}"""

COMMANDS_HELP = """\
  /help    show this help
  /clear   forget the conversation (the system prompt stays)
  /stats   full statistics of the last reply
  /exit    quit (Ctrl-D too)
  End a line with \\ to continue the message on the next line.
  Ctrl-C stops the reply being generated; at the prompt it clears the line."""

MAX_MESSAGE = 32 << 20  # characters of one line read from a non-terminal stdin
PROMPT = "> "
CONTINUATION = ". "


class ClosedInput(InvalidInputError):
    """stdin is closed or empty: there is nothing to chat with."""


class MessageReader:
    """Reads one message per call; a trailing backslash continues it. None at end of input."""

    def __init__(self, out: Output) -> None:
        stdin = sys.stdin
        if stdin is None or stdin.closed:
            raise ClosedInput("stdin is closed: mtprun chat reads messages from a terminal or from stdin")
        self.out = out
        self.stdin = stdin
        self.interactive = stdin.isatty()
        if self.interactive:
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:  # pragma: no cover - not on every platform
                pass

    def _line(self, prompt: str) -> str:
        if self.interactive:
            return input(prompt)
        line = self.stdin.readline(MAX_MESSAGE + 1)
        if not line:
            raise EOFError
        if len(line) > MAX_MESSAGE:
            raise InvalidInputError(f"a message on stdin is longer than {MAX_MESSAGE >> 20} MiB characters")
        return line[:-1] if line.endswith("\n") else line

    def read(self) -> str | None:
        lines: list[str] = []
        while True:
            try:
                line = self._line(CONTINUATION if lines else PROMPT)
            except KeyboardInterrupt:  # Ctrl-C at the prompt: drop what was typed, ask again
                self.out.out.file.write("\n")
                self.out.out.file.flush()
                lines = []
                continue
            except EOFError:
                if self.interactive:
                    self.out.out.file.write("\n")
                    self.out.out.file.flush()
                return "\n".join(lines) if lines else None
            if line.endswith("\\"):
                lines.append(line[:-1])
                continue
            lines.append(line)
            return "\n".join(lines)


@o.command
def chat(opts: o.Generate, model_arg: o.ModelArg = None) -> None:
    out, template = opts.display.output(), opts.template
    opts = replace(opts, source=opts.source.with_argument(model_arg))
    settings = o.settings(opts)
    reader = MessageReader(out)
    with load(out, opts.source, settings) as model:
        eng, gen, info = model.engine, model.gen, model.engine.info
        session = open_session(out, eng, model.files.label, system=template.system_prompt, config=gen,
                               template_file=template.chat_template_file, template_kwargs=settings.template_kwargs)
        _banner(out, model.files.label, gen, mtp_on=gen.spec.enabled and info.mtp_active, n_ctx=info.n_ctx, note=model.saved.note)
        _loop(out, reader, session, n_ctx=info.n_ctx, note=model.saved.note)


def _banner(out: Output, label: str, gen, *, mtp_on: bool, n_ctx: int, note: str | None = None) -> None:
    if not mtp_on:
        spec = "MTP off"
    elif gen.spec.adaptive:
        spec = f"MTP on, drafting 0 to {gen.spec.n_max} tokens per step (auto)"
    else:
        spec = f"MTP on, drafting {gen.spec.n_max} tokens per step"
    if note:
        spec += f" ({note})"
    out.note(f"mtprun chat | {label} | {spec} | context {n_ctx} tokens")
    out.info("Type a message and press Enter (end a line with \\ to continue it). /help for commands, Ctrl-D to quit.")


def _loop(out: Output, reader: MessageReader, session: ChatSession, *, n_ctx: int, note: str | None = None) -> None:
    turns = 0
    while True:
        message = reader.read()
        if message is None:
            if turns == 0 and not reader.interactive:
                raise ClosedInput("no input on stdin: mtprun chat reads messages from a terminal or from stdin")
            return
        command = message.strip()
        if command.startswith("/"):
            name = command.split()[0]
            if name in ("/exit", "/quit"):
                return
            if name == "/help":
                out.note(COMMANDS_HELP)
            elif name == "/clear":
                session.clear()
                out.info("conversation cleared")
            elif name == "/stats":
                last = session.last
                if last is None:
                    out.info("no reply yet")
                else:
                    out.stats_table(last.stats, last.stop_reason, title="last reply")
                    out.info(f"conversation: {session.n_tokens} of {n_ctx} context tokens")
            else:
                out.warn(f"unknown command {name} (type /help)")
            continue
        if not command:
            continue
        turns += 1
        try:
            result = chat_turn(out, session, message)
        except ChatTemplateError as exc:  # the session is as before the message
            out.error(str(exc))
            continue
        except ContextOverflowError as exc:
            out.error(f"{exc} (use /clear to start over)")
            continue
        out.stats_line(result.stats, result.stop_reason, note=note)
        if out.verbose:
            out.stats_table(result.stats, result.stop_reason, title="reply")
        if result.stop_reason == "context":
            out.warn("the context is full: use /clear to start over, or a larger -c")
