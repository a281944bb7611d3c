"""``mtprun bench``: plain decoding vs MTP on this machine and model, in one command, and remembered.

The measuring is :mod:`mtprun.benchmark`'s (the same code as ``scripts/bench_engine.py``): one
engine loaded once, every configuration (plain, each fixed draft length, the adaptive mode where
this mtprun has it) run over the prompt set, alternating over the repetitions, reported as
medians. ``--save`` remembers the winner (:mod:`mtprun.tuning`) for ``run`` and ``chat``.
"""

from __future__ import annotations

import signal
import statistics
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .. import benchmark as bm
from .. import tuning
from ..errors import ContextOverflowError, InvalidInputError
from . import _options as o
from ._errors import EXIT_CODES_HELP
from ._model import open_engine, resolve_files
from ._stream import open_session
from .ui import Output

BENCH = "Benchmark"
NMaxListOpt = Annotated[str, typer.Option("--n-max", metavar="LIST", help="Fixed draft lengths to measure: 1,2,4 or 1-6.", rich_help_panel=BENCH)]
TokensOpt = Annotated[int, typer.Option("-n", "--tokens", metavar="N", help="Tokens generated per prompt and run.", rich_help_panel=BENCH)]
RepsOpt = Annotated[int, typer.Option("-r", "--reps", metavar="R", help="Repetitions of every configuration (medians are reported).", rich_help_panel=BENCH)]
PromptsOpt = Annotated[
    Optional[Path],
    typer.Option("--prompts", metavar="FILE", help='Your prompts: one per line, or JSONL lines {"prompt": ...} (default: a built-in set of five kinds).', show_default=False, rich_help_panel=BENCH),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print every figure as one JSON object instead of the table.", rich_help_panel=o.OUTPUT)]
MarkdownOpt = Annotated[bool, typer.Option("--markdown", help="Print a Markdown table (llama-bench's columns) instead of the table.", rich_help_panel=o.OUTPUT)]
SaveOpt = Annotated[bool, typer.Option("--save", help="Remember the fastest setting for this model file and machine; run and chat then use it.", rich_help_panel=BENCH)]
ShowOpt = Annotated[bool, typer.Option("--show", help="Show the saved settings (for the model given, or all) and exit.", rich_help_panel=BENCH)]
ForgetOpt = Annotated[bool, typer.Option("--forget", help="Forget the saved settings of the model given and exit.", rich_help_panel=BENCH)]

MAX_TOKENS = 4096
MAX_REPS = 100

HELP = f"""Measure plain decoding against MTP speculative decoding on this machine and model: each fixed draft length (--n-max, default 1-6) and the adaptive mode, alternated over --reps repetitions, medians reported.

The prompt set (conversation, code, a list, a translation, a long summary; or --prompts FILE) goes through the model's chat template, greedy decoding. Shows a table per configuration, a bar chart of tok/s and a verdict; --json and --markdown for scripts and issues. Ctrl-C stops with what was measured so far. --save remembers the fastest setting for this model file and machine: run and chat use it when no --spec-draft-n-max is given.

{EXIT_CODES_HELP}"""


@o.command
def bench(
    source: o.ModelSource,
    runtime: o.Runtime,
    display: o.Display,
    n_max: NMaxListOpt = "1-6",
    tokens: TokensOpt = 64,
    reps: RepsOpt = 3,
    prompts: PromptsOpt = None,
    chat_template_file: o.ChatTemplateFileOpt = None,
    chat_template_kwargs: o.ChatTemplateKwargsOpt = None,
    json_output: JsonOpt = False,
    markdown: MarkdownOpt = False,
    save: SaveOpt = False,
    show: ShowOpt = False,
    forget: ForgetOpt = False,
) -> int:
    out = display.output()
    picked = [name for name, v in (("--show", show), ("--forget", forget), ("--save", save)) if v]
    if len(picked) > 1:
        raise InvalidInputError(f"give only one of {' and '.join(picked)}")
    if json_output and markdown:
        raise InvalidInputError("give --json or --markdown, not both")
    if show or forget:
        return _manage(out, show=show, source=source, json_output=json_output)
    ns = bm.parse_n_max_list(n_max)
    if not 1 <= tokens <= MAX_TOKENS:
        raise InvalidInputError(f"--tokens must be within 1..{MAX_TOKENS}, got {tokens}")
    if not 1 <= reps <= MAX_REPS:
        raise InvalidInputError(f"--reps must be within 1..{MAX_REPS}, got {reps}")
    texts = ([("prompt", t) for t in bm.read_prompt_file(prompts)] if prompts is not None
             else list(bm.BUILTIN_PROMPTS))
    kwargs = o.template_kwargs(chat_template_kwargs, demo=source.demo)
    auto = bm.adaptive_available()
    capacity = max(ns + ([bm.AUTO_N_MAX] if auto else []))
    base = o.model_config(runtime, mtp=True, n_max=capacity, verbose=display.verbose)
    choice = resolve_files(out, source)
    with open_engine(out, choice, base) as eng:
        info = eng.info
        configs = bm.configurations(ns, auto=True) if info.mtp_active else bm.configurations([], auto=False)
        if info.mtp_active and not auto:
            out.info("note: this mtprun has no adaptive draft length; measuring plain and fixed draft lengths")
        session = open_session(out, eng, choice.label, template_file=chat_template_file, template_kwargs=kwargs)
        token_sets = []
        for _, text in texts:
            ids = session.prompt_tokens(text)
            if len(ids) + tokens + bm.AUTO_N_MAX + 1 > info.n_ctx:
                raise ContextOverflowError(f"a prompt of {len(ids)} tokens plus --tokens {tokens} does not fit the context of {info.n_ctx} (-c)")
            token_sets.append(ids)
        with out.steps("bench", reps * len(configs)) as update, _interruptible(eng) as stopped:
            def measure(c: bm.Configuration) -> bm.Measurement:
                if stopped():
                    raise KeyboardInterrupt
                m = bm.measure_engine(eng, token_sets, c, tokens)
                if stopped():  # Ctrl-C between two prompts: not a whole measurement
                    raise KeyboardInterrupt
                return m

            runs = bm.run_alternating(
                configs, measure, reps,
                progress=lambda done, total, c: update(done, f"{c.name} ({done // len(configs) + 1}/{reps})"),
            )
        machine = tuning.machine_identity(info.backend)
        ident = tuning.model_identity(choice.path, choice.draft_path if info.mtp_kind == "sidecar" else None)
    report = build_report(choice, info, machine, configs, runs, tokens=tokens, reps=reps, texts=texts,
                          threads=base.n_threads, auto_available=auto)
    if save:
        report["saved"] = _save(out, report, ident, machine, runs.interrupted)
    if json_output:
        out.json(_finite(report))  # strict JSON: no NaN
    elif markdown:
        out.text(markdown_table(report), end="")
    else:
        show_report(out, report)
    if runs.interrupted:
        out.warn(f"interrupted: figures from {report['runs_done']} of {reps * len(configs)} runs")
        return 130
    return 0


@contextmanager
def _interruptible(engine) -> Iterator[Callable[[], bool]]:
    """While measuring, Ctrl-C cancels the engine's generation at its next step (never an exception
    inside the engine) and is remembered; yields ``stopped()``."""
    hit = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield hit.is_set
        return

    def on_sigint(signum, frame) -> None:
        hit.set()
        engine.cancel()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield hit.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or x != x else format(x, spec)


def build_report(choice, info, machine: dict, configs, runs: bm.Runs, *, tokens: int, reps: int, texts, threads,
                 auto_available: bool) -> dict[str, Any]:
    """Every figure as one JSON-ready object (what --json prints; the table and Markdown read it)."""
    summaries = {c.name: bm.summarize(r) for c, r in runs.by_config.items() if r}
    comp = bm.compare(summaries)
    best = bm.winner(configs, summaries)
    rows = []
    for c in configs:
        s = summaries.get(c.name)
        ms = runs.by_config.get(c, [])
        rows.append({
            "name": c.name, "kind": c.kind, "n_max": c.n_max, "setting": bm.setting_name(c),
            "runs": len(ms), "winner": best is not None and c == best,
            "tokens_per_second": s.tps if s else None,
            "tokens_per_second_stdev": statistics.stdev(s.tps_runs) if s and len(s.tps_runs) > 1 else 0.0 if s else None,
            "x_plain": comp.x_plain.get(c.name) if s else None,
            "acceptance": s.acceptance if s and c.kind != "plain" else None,
            "tokens_per_target_pass": s.tokens_per_pass if s else None,
            "acceptance_by_position": list(s.acceptance_by_position) if s and c.kind != "plain" else [],
            "prompt_tokens_per_second": s.prompt_tps if s else None,
            "draft_seconds_per_token": s.draft_seconds_per_token if s and c.kind != "plain" else None,
            "verify_seconds_per_pass": s.verify_seconds_per_pass if s else None,
            "median": s.as_dict() if s else None,
            "measurements": [m.as_dict() for m in ms],
        })
    done = sum(len(r) for r in runs.by_config.values())
    return {
        "model": choice.label,
        "model_path": str(choice.path),
        "synthetic": choice.synthetic,
        "model_size": info.size_bytes,
        "model_params": info.n_params,
        "mtp": info.mtp_active,
        "backend": info.backend,
        "threads": threads,
        "machine": machine,
        "tokens": tokens,
        "reps": reps,
        "prompts": [{"kind": k, "chars": len(t)} for k, t in texts],
        "adaptive_available": auto_available,
        "configurations": rows,
        "winner": best.name if best else None,
        "winner_setting": bm.setting_name(best) if best else None,
        "verdict": verdict(rows, best, info.mtp_active),
        "comparison": comp.as_dict(),
        "interrupted": runs.interrupted,
        "runs_done": done,
        "saved": False,
    }


def verdict(rows: list[dict], best, mtp: bool) -> str:
    """One line: what to use on this machine."""
    if not mtp:
        return "MTP is not available for this model: plain decoding only"
    if best is None:
        return "nothing was measured"
    by = {r["name"]: r for r in rows}
    if best.kind == "plain":
        spec = [r for r in rows if r["kind"] != "plain" and r["tokens_per_second"]]
        top = max(spec, key=lambda r: r["tokens_per_second"], default=None)
        tail = f" (best MTP: {top['name']} at {top['x_plain']:.2f}x)" if top and top["x_plain"] == top["x_plain"] else ""
        return f"plain decoding is the fastest on this machine{tail}"
    x = by[best.name]["x_plain"]
    label = "MTP auto" if best.kind == "auto" else f"MTP n={best.n_max}"
    return f"{label}: {_fmt(x, '.2f')}x plain on this machine"


def _pcts(xs: list[float]) -> str:
    return " ".join(f"{100 * x:.0f}%" for x in xs) or "-"


def show_report(out: Output, r: dict) -> None:
    cols = ["config", "tok/s", "x plain", "accept", "tok/pass", "accept by position", "pp tok/s", "runs"]
    rows = []
    for c in r["configurations"]:
        rows.append([
            c["name"] + (" *" if c["winner"] else ""), _fmt(c["tokens_per_second"], ".1f"), _fmt(c["x_plain"], ".2f"),
            "-" if c["acceptance"] is None else f"{100 * c['acceptance']:.0f}%", _fmt(c["tokens_per_target_pass"], ".2f"),
            _pcts(c["acceptance_by_position"]) if c["kind"] != "plain" else "-", _fmt(c["prompt_tokens_per_second"], ".1f"),
            str(c["runs"]),
        ])
    title = (f"{r['model']} | {r['backend']} | {r['tokens']} tokens x {len(r['prompts'])} prompts | "
             f"medians of {r['reps']} repetitions (* fastest)")
    out.grid(title, cols, rows, to_stdout=True, right=(1, 2, 3, 4, 6, 7))
    out.out.print()
    out.bars("tok/s", [(c["name"], c["tokens_per_second"] or 0.0, c["winner"]) for c in r["configurations"] if c["runs"]],
             unit=" tok/s", to_stdout=True)
    out.out.print()
    out.text(r["verdict"] + "\n")
    if r.get("saved"):
        out.info(f"saved: run and chat use {r['winner_setting']} for this model on this machine (mtprun bench --forget undoes it)")


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(r: dict) -> str:
    """llama-bench's Markdown columns (model, size, params, backend, threads, test, t/s) plus MTP's."""
    from .ui import human_count, human_size

    head = ["model", "size", "params", "backend", "threads", "spec", "test", "t/s", "x plain", "accepted", "tok/pass", "pp t/s"]
    align = ["---", "---:", "---:", "---", "---:", "---", "---:", "---:", "---:", "---:", "---:", "---:"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    for c in r["configurations"]:
        if not c["runs"]:
            continue
        tps = _fmt(c["tokens_per_second"], ".2f") + (f" ± {c['tokens_per_second_stdev']:.2f}" if c["runs"] > 1 else "")
        cells = [
            _md_escape(r["model"]), human_size(r["model_size"]), human_count(r["model_params"]), _md_escape(r["backend"]),
            str(r["threads"] if r["threads"] is not None else "default"),
            c["name"] + (" **best**" if c["winner"] else ""), f"tg{r['tokens']}", tps, _fmt(c["x_plain"], ".2f"),
            "-" if c["acceptance"] is None else f"{100 * c['acceptance']:.0f}%", _fmt(c["tokens_per_target_pass"], ".2f"),
            _fmt(c["prompt_tokens_per_second"], ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"{r['verdict']} (medians of {r['reps']} repetitions, {len(r['prompts'])} prompts)")
    return "\n".join(lines) + "\n"


def _save(out: Output, report: dict, ident: dict, machine: dict, interrupted: bool) -> bool:
    if interrupted:
        out.warn("not saved: the benchmark was interrupted")
        return False
    if not report["winner_setting"]:
        out.warn("not saved: nothing was measured")
        return False
    rows = {c["name"]: c for c in report["configurations"]}
    best = rows[report["winner"]]
    plain = rows.get("plain")
    fixed = {c["n_max"]: c for c in rows.values() if c["runs"] and c["kind"] == "fixed"}
    heads = [c["draft_seconds_per_token"] for c in fixed.values() if c["draft_seconds_per_token"] is not None]
    top = fixed[max(fixed)] if fixed else None
    auto = rows.get("auto")
    policy = auto["measurements"][-1].get("policy") if auto and auto["measurements"] else None
    # in the adaptive controller's terms (PolicyEstimates): a target pass over 1 (plain), 2 (n=1), ...
    # tokens, one MTP-head decode, acceptance by draft position (from the longest fixed n measured)
    costs = {
        "target_seconds_by_batch": [plain["verify_seconds_per_pass"] if plain else None]
                                   + [fixed[n]["verify_seconds_per_pass"] if n in fixed else None
                                      for n in range(1, max(fixed, default=0) + 1)],
        "head_seconds": statistics.median(heads) if heads else None,
        "acceptance_by_position": top["acceptance_by_position"] if top else [],
        "auto_policy": policy,
    }
    store = tuning.Store.load()
    if store.warning:
        out.warn(store.warning + " (it will be replaced)")
    store.put(tuning.Saved(
        setting=report["winner_setting"], model=ident, machine=machine, x_plain=best["x_plain"],
        tokens_per_second=best["tokens_per_second"], costs=_finite(costs),
        measured={"tokens": report["tokens"], "reps": report["reps"], "prompts": len(report["prompts"]),
                  "configurations": [c["name"] for c in report["configurations"]]},
    ))
    store.save()
    return True


def _finite(obj: Any) -> Any:
    """NaN becomes None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if obj == obj else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _manage(out: Output, *, show: bool, source: o.ModelSource, json_output: bool) -> int:
    """--show / --forget: no engine is loaded."""
    store = tuning.Store.load()
    if store.warning:
        out.warn(store.warning)
    path = None
    if source.given:
        choice = resolve_files(out, source)
        path = str(Path(choice.path).resolve())
    elif not show:
        raise InvalidInputError("--forget needs the model: -m PATH, -hf OWNER/NAME[:QUANT] or --demo")
    if not show:
        n = store.forget({"path": path}, None)
        if n:
            store.save()
        if json_output:
            out.json({"forgotten": n, "model_path": path, "file": str(store.path)})
        else:
            out.note(f"forgot {n} saved setting{'s' if n != 1 else ''} for {path}" if n else f"no saved setting for {path}")
        return 0
    entries = [e for e in store.entries.values() if path is None or e.model.get("path") == path]
    if json_output:
        out.json({"file": str(store.path), "entries": [_finite(e.as_dict()) for e in entries]})
        return 0
    if not entries:
        out.note(f"no saved settings{' for ' + path if path else ''} ({store.path})")
        return 0
    rows = [[Path(e.model.get("path", "?")).name, e.setting, _fmt(e.x_plain, ".2f"), _fmt(e.tokens_per_second, ".1f"),
             f"{e.machine.get('cpu', '?')} x{e.machine.get('cores', '?')}", str(e.machine.get("backend", "?")),
             str(e.machine.get("llama_cpp", "?")), e.saved_at] for e in entries]
    out.grid(f"saved settings ({store.path})", ["model", "setting", "x plain", "tok/s", "CPU", "backend", "llama.cpp", "saved"],
             rows, to_stdout=True, right=(2, 3))
    return 0
