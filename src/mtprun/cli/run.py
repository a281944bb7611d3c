"""``mtprun run``: one-shot generation. The generated text goes to stdout and nothing else does."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..chat import read_text_file, reasoning_tags, split_reasoning
from ..errors import InvalidInputError
from . import _options as o
from ._errors import EXIT_CODES_HELP
from ._model import load
from ._stream import chat_turn, generate, open_session

PromptOpt = Annotated[Optional[str], typer.Option("-p", "--prompt", metavar="TEXT", help="The prompt.", show_default=False)]
FileOpt = Annotated[Optional[Path], typer.Option("-f", "--file", metavar="FILE", help="Read the prompt from FILE ('-': stdin).", show_default=False)]
RawOpt = Annotated[bool, typer.Option("--raw", help="Use the prompt as it is, without the chat template.", rich_help_panel=o.CHAT)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object (text, stop reason, every statistic) instead of streaming text.", rich_help_panel=o.OUTPUT)]

MAX_PROMPT_BYTES = 32 << 20  # -f FILE and stdin: far more than any context holds

HELP = f"""One-shot generation: the reply to a prompt from -p, -f or stdin.

The generated text goes to stdout, statistics and warnings to stderr, so `mtprun run ... > out.txt` and pipes get only the text. The prompt is wrapped in the model's chat template unless --raw is given.

{EXIT_CODES_HELP}"""


def read_prompt(prompt: str | None, file: Path | None) -> str:
    """The prompt from -p, -f FILE (or '-'), or stdin when it is not a terminal."""
    if prompt is not None and file is not None:
        raise InvalidInputError("give the prompt with -p or -f, not both")
    if prompt is not None:
        return prompt
    if file is not None and str(file) != "-":
        return read_text_file(file, limit=MAX_PROMPT_BYTES, what="prompt file")
    stdin = sys.stdin
    if stdin is None or stdin.closed or (file is None and stdin.isatty()):
        raise InvalidInputError("no prompt: give -p TEXT, -f FILE, or pipe the prompt on stdin")
    text = read_text_file("-", limit=MAX_PROMPT_BYTES, what="prompt on")
    if not text.strip():
        raise InvalidInputError("no prompt: stdin was empty (give -p TEXT or -f FILE)")
    return text


@o.command
def run(
    opts: o.Generate,
    prompt: PromptOpt = None,
    file: FileOpt = None,
    raw: RawOpt = False,
    json_output: JsonOpt = False,
) -> None:
    out, template = opts.display.output(), opts.template
    # everything the user typed is checked before a model is downloaded, built or loaded
    settings = o.settings(opts)
    if raw and template.given:
        raise InvalidInputError("--raw skips the chat template: -sys, --chat-template-file and --chat-template-kwargs do not apply")
    text = read_prompt(prompt, file)
    with load(out, opts.source, settings) as model:
        eng, choice, gen, saved = model.engine, model.files, model.gen, model.saved
        info = eng.info
        if raw:
            tokens = eng.tokenize(text, add_special=True, parse_special=True)
            tags = reasoning_tags(info.chat_template)
            result = generate(eng, tokens, gen, None if json_output else out.reply(tags=tags))
            reasoning, answer = split_reasoning(result.text, tags=tags)
        else:
            session = open_session(out, eng, choice.label, system=template.system_prompt, config=gen,
                                   template_file=template.chat_template_file, template_kwargs=settings.template_kwargs)
            reply = chat_turn(out, session, text, render=not json_output)
            result, reasoning, answer = reply.result, reply.reasoning, reply.answer
        if json_output:
            out.json({
                "model": choice.label,
                "synthetic": choice.synthetic,
                "text": result.text,
                "reasoning": reasoning,
                "answer": answer,
                "stop_reason": result.stop_reason,
                "mtp": result.stats.mtp,
                "spec_draft_n_max": gen.spec.n_max if result.stats.mtp else 0,
                "spec_draft_length": gen.spec.label if result.stats.mtp else "off",
                "spec_draft_n_max_source": "option" if settings.n_max_given else saved.source,
                "saved_setting": saved.used.setting if saved.used else None,
                "stats": result.stats.as_dict(),
                "memory": info.memory.as_dict() if info.memory else None,
            })
        else:
            out.stats_line(result.stats, result.stop_reason, note=saved.note)
            if opts.display.verbose:
                out.stats_table(result.stats, result.stop_reason)
                if info.memory:
                    out.table("memory allocated (llama.cpp)", measured_rows(info.memory))
    if result.stop_reason == "cancelled":
        raise typer.Exit(130)


def measured_rows(mem) -> list[tuple[str, str]]:
    """llama.cpp's memory breakdown as table rows (MiB)."""
    def mib(n: int) -> str:
        return f"{n / 2**20:,.1f} MiB"

    rows = [
        ("model weights", mib(mem.weights)),
        ("KV cache + recurrent state", mib(mem.state)),
        ("compute buffers", mib(mem.compute)),
    ]
    if mem.mtp_weights or mem.mtp_state or mem.mtp_compute:
        rows.append(("MTP weights / state / compute", f"{mib(mem.mtp_weights)} / {mib(mem.mtp_state)} / {mib(mem.mtp_compute)}"))
    rows.append(("total", mib(mem.total)))
    for dev, n in sorted(mem.devices.items()):
        rows.append((f"  on {dev or 'host'}", mib(n)))
    return rows
