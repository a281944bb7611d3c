"""``mtprun run``: one-shot generation. The generated text goes to stdout and nothing else does."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..chat import read_text_file, reasoning_tags, split_reasoning
from ..errors import InvalidInputError
from . import _options as o
from ._errors import EXIT_CODES_HELP, run_guarded
from ._model import choose_model, open_engine
from ._saved import DEFAULT_N_MAX, SavedSetting
from ._stream import chat_turn, generate, open_session
from .ui import Output

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


def run(
    prompt: PromptOpt = None,
    file: FileOpt = None,
    model: o.ModelPathOpt = None,
    hf_repo: o.HfRepoOpt = None,
    revision: o.RevisionOpt = None,
    offline: o.OfflineOpt = False,
    model_draft: o.DraftPathOpt = None,
    demo: o.DemoOpt = False,
    system_prompt: o.SystemPromptOpt = None,
    raw: RawOpt = False,
    chat_template_file: o.ChatTemplateFileOpt = None,
    chat_template_kwargs: o.ChatTemplateKwargsOpt = None,
    n_predict: o.NPredictOpt = None,
    ctx_size: o.CtxSizeOpt = 4096,
    threads: o.ThreadsOpt = None,
    n_gpu_layers: o.GpuLayersOpt = -1,
    temp: o.TempOpt = 0.8,
    top_k: o.TopKOpt = 40,
    top_p: o.TopPOpt = 0.95,
    min_p: o.MinPOpt = 0.05,
    repeat_penalty: o.RepeatPenaltyOpt = 1.0,
    presence_penalty: o.PresencePenaltyOpt = 0.0,
    seed: o.SeedOpt = -1,
    spec_draft_n_max: o.SpecDraftNMaxOpt = None,  # None: what `mtprun bench --save` found, else the default
    draft_p_min: o.DraftPMinOpt = 0.0,
    no_mtp: o.NoMtpOpt = False,
    spec_type: o.SpecTypeOpt = None,
    require_mtp: o.RequireMtpOpt = False,
    json_output: JsonOpt = False,
    color: o.ColorOpt = None,
    verbose: o.VerboseOpt = False,
) -> None:
    out = Output(color=color, verbose=verbose)

    def body() -> None:
        # everything the user typed is checked before a model is downloaded, built or loaded
        mtp = o.mtp_wanted(no_mtp, spec_type, require_mtp)
        n_max = DEFAULT_N_MAX if spec_draft_n_max is None else spec_draft_n_max
        gen = o.generation_config(
            n_predict=n_predict, temp=temp, top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
            presence_penalty=presence_penalty, seed=seed, mtp=mtp, n_max=n_max, p_min=draft_p_min,
        )
        kwargs = o.template_kwargs(chat_template_kwargs, demo=demo)
        o.model_config(ctx_size=ctx_size, threads=threads, n_gpu_layers=n_gpu_layers, mtp=mtp, n_max=gen.spec.n_max, verbose=verbose)
        if raw and (system_prompt is not None or chat_template_file is not None or chat_template_kwargs is not None):
            raise InvalidInputError("--raw skips the chat template: -sys, --chat-template-file and --chat-template-kwargs do not apply")
        text = read_prompt(prompt, file)
        choice = choose_model(
            out, model=model, hf=hf_repo, draft=model_draft, demo=demo, mtp=mtp, revision=revision, offline=offline,
        )
        saved = SavedSetting(out, choice, wanted=mtp and spec_draft_n_max is None)
        base = o.model_config(ctx_size=ctx_size, threads=threads, n_gpu_layers=n_gpu_layers, mtp=mtp,
                              n_max=max(gen.spec.n_max, saved.capacity), verbose=verbose)
        with open_engine(out, choice, base, require_mtp=require_mtp) as eng:
            info = eng.info
            gen = saved.apply(info, gen)
            if raw:
                tokens = eng.tokenize(text, add_special=True, parse_special=True)
                tags = reasoning_tags(info.chat_template)
                result = generate(eng, tokens, gen, None if json_output else out.reply(tags=tags))
                reasoning, answer = split_reasoning(result.text, tags=tags)
            else:
                session = open_session(out, eng, choice.label, system=system_prompt, config=gen,
                                       template_file=chat_template_file, template_kwargs=kwargs)
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
                    "spec_draft_n_max_source": "option" if spec_draft_n_max is not None else saved.source,
                    "saved_setting": saved.used.setting if saved.used else None,
                    "stats": result.stats.as_dict(),
                    "memory": info.memory.as_dict() if info.memory else None,
                })
            else:
                out.stats_line(result.stats, result.stop_reason, note=saved.note)
                if verbose:
                    out.stats_table(result.stats, result.stop_reason)
                    if info.memory:
                        out.table("memory allocated (llama.cpp)", measured_rows(info.memory))
        if result.stop_reason == "cancelled":
            raise typer.Exit(130)

    run_guarded(body)


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
