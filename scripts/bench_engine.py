#!/usr/bin/env python3
"""Benchmark mtprun's engine: plain decoding vs MTP speculative decoding, in one run.

Cells: synthetic bench-size oracle models (mtprun.synth's ``bench`` preset deepened to 12 layers:
1.1 GB of f16 weights) per weight type (``--quant``: f16 or a llama.cpp quantization) and MTP
agreement (``--agree``), plus, with ``--phases``, a phase-changing model whose agreement
alternates along the text (``--phase-spec``; no fixed draft length is right everywhere).
Configurations per cell: plain decoding, fixed draft lengths (``--n-max``), ``auto`` (the
adaptive draft length, ceiling 6, where this mtprun has it) and llama.cpp's own
``llama-speculative-simple --spec-type draft-mtp`` at each n (``--ref-bin DIR`` or
``MTPRUN_LLAMA_REF_BIN``; build it with ``scripts/build_reference.sh``). They alternate over
``--reps`` repetitions (machines are noisy) and the figures are medians: tok/s, x plain,
acceptance, acceptance by draft position, tokens per target pass, prompt speed, where mtprun's
time goes, auto vs the best fixed n and vs llama.cpp's best n, and a summary of issue 15's
targets naming the cells that miss them. ``--json OUT`` writes every figure.

Models are built once into ``--cache`` ($MTPRUN_BENCH_CACHE, else $MTPRUN_CACHE/bench, else
~/.cache/mtprun/bench). The measuring code lives in ``mtprun.benchmark``.

    python scripts/bench_engine.py                                  # a few minutes on 2 cores
    python scripts/bench_engine.py --quant f16,Q8_0,Q4_K_M --agree 0.3,0.5,0.7,0.9 --phases \\
        --reps 3 --tokens 128 --json bench.json                     # the full figures
    python scripts/bench_engine.py --preset tiny --agree 0.7 --n-max 1,2 --reps 1 --tokens 32   # smoke
    python scripts/bench_engine.py --preset tiny --vocab 248320 --temp 0.8 --top-k 0 --agree 0.7   # sampling a large vocabulary
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from mtprun import ModelConfig, SamplingConfig
from mtprun import benchmark as bm
from mtprun.engine import Engine
from mtprun.errors import MtprunError
from mtprun.synth import ARCHS, QUANTS, SynthSpec, cycle_length, draft_path_for, parse_agree_phases, write_model

# The bench preset, deepened so the MTP head (one block + the output head) weighs ~14% of the
# target as in real MTP models (Qwen3.6-27B: ~6%), rather than the ~40% of a 4-layer model.
BENCH_SHAPE = {"n_layer": 12, "n_ff": 4096}
PROMPTS = [
    " Once upon a quiet morning, seven curious foxes",
    " Every brave explorer carried bright lanterns and small maps;",
    "Hello there, tell me a story.",
]
DEFAULT_PHASES = "40:0.95,40:0.2"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _list(kind, name: str):
    def parse(text: str):
        try:
            out = [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a comma-separated list, got {text!r}") from None
        if not out:
            raise argparse.ArgumentTypeError(f"{name} is empty")
        return out
    return parse


def default_cache() -> Path:
    if os.environ.get("MTPRUN_BENCH_CACHE"):
        return Path(os.environ["MTPRUN_BENCH_CACHE"]).expanduser()
    if os.environ.get("MTPRUN_CACHE"):
        return Path(os.environ["MTPRUN_CACHE"]).expanduser() / "bench"
    return Path.home() / ".cache" / "mtprun" / "bench"


def build_model(cache: Path, arch: str, preset: str, quant: str, agree: float, phases, vocab: int | None = None) -> tuple[Path, Path | None, int]:
    """The cell's model in the cache (written once; the key is the whole spec), its drafter
    sidecar if it has one, and its cycle length."""
    # tiny (smoke runs): widened so that K-quants' 256-value blocks fit every row
    shape = dict(BENCH_SHAPE) if preset == "bench" else {"n_embd": 512, "n_ff": 512, "draft_n_embd": 256}
    if vocab is not None:
        shape["n_vocab"] = vocab
    if quant not in ("f16", "f32"):
        shape.update(dtype="f16", quant=quant)
    elif quant == "f32":
        shape.update(dtype="f32")
    else:
        shape.update(dtype="f16")
    spec = SynthSpec.preset(preset, arch=arch, mode="oracle", agree=agree, seed=1, agree_phases=phases, **shape)
    key = hashlib.sha256(repr(spec).encode()).hexdigest()[:10]
    label = f"phases-{key}" if phases else f"{agree:g}-{key}"
    path = cache / f"bench-{arch}-{quant}-{label}.gguf"
    if not path.exists():
        t0 = time.perf_counter()
        res = write_model(spec, path)
        print(f"# built {path.name}: {res.weight_bytes / 1e6:.0f} MB of weights in {time.perf_counter() - t0:.1f}s", flush=True)
    draft = draft_path_for(path)  # a drafter sidecar, for architectures that have one (gemma4)
    return path, draft if draft.exists() else None, cycle_length(spec)


def fmt(x: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if x is None or x != x else f"{x:{spec}}{suffix}"


def print_cell(name: str, cmp: bm.Comparison, runs: bm.Runs) -> None:
    ms = {c.name: r for c, r in runs.by_config.items()}
    print(f"config             tok/s  x plain  accept  tok/pass  prompt t/s  ms/step  target  mtp-head  choose   accept by position")
    for cname, s in cmp.summaries.items():
        if not s.n_runs:
            continue
        line = (f"{cname:16s} {s.tps:7.2f} {cmp.x_plain[cname]:7.2f}x {fmt(s.acceptance if cname != 'plain' else None, '6.1%'):>6s}"
                f" {s.tokens_per_pass:8.2f} {s.prompt_tps:10.1f}")
        if not cname.startswith("llama.cpp"):
            steps = [m for m in ms[cname] if m.n_target_passes]
            per = lambda f: statistics.median(1e3 * f(m) / m.n_target_passes for m in steps) if steps else float("nan")  # noqa: E731
            line += (f" {per(lambda m: m.generation_seconds):8.1f} {per(lambda m: m.verify_seconds):7.1f}"
                     f" {per(lambda m: m.draft_seconds):9.1f} {per(lambda m: m.sample_seconds):7.2f}")
        else:
            line += " " * 35
        line += "   " + " ".join(f"{x:.2f}" for x in s.acceptance_by_position)
        print(line)
    notes = []
    if cmp.best_fixed:
        notes.append(f"best fixed {cmp.best_fixed} ({cmp.x_plain[cmp.best_fixed]:.2f}x plain)")
    if cmp.best_reference:
        notes.append(f"llama.cpp's best {cmp.best_reference.split()[-1]} ({cmp.x_plain[cmp.best_reference]:.2f}x plain)")
    if cmp.auto_vs_plain is not None:
        notes.append(f"auto: {cmp.auto_vs_plain:.2f}x plain, {fmt(cmp.auto_vs_best_fixed)}x best fixed, "
                     f"{fmt(cmp.auto_vs_best_reference)}x llama.cpp's best")
    if notes:
        print("  " + "; ".join(notes), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="qwen35", choices=ARCHS, help="synthetic architecture (default qwen35)")
    ap.add_argument("--quant", type=_list(str, "--quant"), default=["f16"],
                    help="weight types, comma-separated: f16, f32 or " + ", ".join(QUANTS) + " (default f16)")
    ap.add_argument("--agree", type=_list(float, "--agree"), default=[0.5, 0.9], help="MTP agreements (default 0.5,0.9)")
    ap.add_argument("--phases", action="store_true", help="also the phase-changing model (per weight type)")
    ap.add_argument("--phase-spec", default=DEFAULT_PHASES, help=f"its phases, LEN:AGREE,... (default {DEFAULT_PHASES})")
    ap.add_argument("--n-max", type=_list(int, "--n-max"), default=[1, 2, 3, 4, 5, 6], help="fixed draft lengths (default 1..6)")
    ap.add_argument("--no-auto", action="store_true", help="skip the adaptive configuration")
    ap.add_argument("--no-ref", action="store_true", help="skip llama.cpp's loop")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (medians; default 3)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per prompt (default 64)")
    ap.add_argument("--prompts", type=int, default=2, help=f"how many of the built-in prompts (1..{len(PROMPTS)}, default 2)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--preset", default="bench", choices=["bench", "tiny"])
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary size (default the preset's; Qwen3.5's is 248320)")
    ap.add_argument("--temp", type=float, default=0.0, help="sample at this temperature (default 0: greedy; llama.cpp's loop is then skipped)")
    ap.add_argument("--top-k", type=int, default=40, help="with --temp: top-k (0: off; default 40)")
    ap.add_argument("--top-p", type=float, default=0.95, help="with --temp: top-p (1: off; default 0.95)")
    ap.add_argument("--min-p", type=float, default=0.05, help="with --temp: min-p (0: off; default 0.05)")
    ap.add_argument("--cache", type=Path, default=None, help="where the models are built (see above)")
    ap.add_argument("--ref-bin", type=Path, default=os.environ.get("MTPRUN_LLAMA_REF_BIN"))
    ap.add_argument("--json", type=Path, metavar="OUT", help="write every figure to OUT")
    args = ap.parse_args(argv)

    bad = [q for q in args.quant if q not in ("f16", "f32") and q not in QUANTS]
    if bad:
        ap.error(f"unknown --quant {bad[0]!r} (choose from f16, f32, {', '.join(QUANTS)})")
    if any(not 0 <= a <= 1 for a in args.agree):
        ap.error("--agree values must be in [0, 1]")
    if any(not 1 <= n <= 8 for n in args.n_max):
        ap.error("--n-max values must be within 1..8")
    if args.reps < 1 or args.tokens < 1 or not 1 <= args.prompts <= len(PROMPTS) or args.threads < 1:
        ap.error("--reps, --tokens and --threads must be at least 1, --prompts within 1..3")
    try:
        phases = parse_agree_phases(args.phase_spec) if args.phases else None
        sampling = SamplingConfig(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, seed=0)
    except MtprunError as exc:
        ap.error(str(exc))
    cache = args.cache or default_cache()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        ap.error(f"cannot create the cache directory {cache}: {exc.strerror}")
    ref = args.ref_bin if args.ref_bin and (Path(args.ref_bin) / "llama-speculative-simple").is_file() else None

    greedy = args.temp <= 0  # llama.cpp's loop is run greedy only (its sampler draws other numbers)
    configs = bm.configurations(args.n_max, auto=not args.no_auto, reference=ref is not None and not args.no_ref and greedy)
    texts = PROMPTS[: args.prompts]
    how = "greedy" if greedy else f"sampled (temp {args.temp:g}, top-k {args.top_k}, top-p {args.top_p:g}, min-p {args.min_p:g})"
    print(f"# mtprun bench: {args.arch}, {args.tokens} tokens {how} x {len(texts)} prompts, {args.threads} threads, "
          f"ctx {args.ctx}, {args.reps} reps alternating (medians), flash attention off; {platform.machine()} "
          f"{os.cpu_count()} CPUs" + (f"; llama.cpp reference {ref}" if ref else "; no llama.cpp reference binary"))
    if not args.no_auto and not bm.adaptive_available():
        print("# note: this mtprun's SpecConfig has no `adaptive` field yet: the auto configuration is skipped")
    cells: list[tuple[str, float | None, str]] = [(q, a, f"{q} agree {a:g}") for q in args.quant for a in args.agree]
    if phases:
        cells += [(q, None, f"{q} phases {args.phase_spec}") for q in args.quant]

    report: dict = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "configurations": [c.name for c in configs], "cells": {}}
    comparisons: dict[str, bm.Comparison] = {}
    interrupted = failed = False
    for quant, agree, cell in cells:
        try:
            path, draft, cycle = build_model(cache, args.arch, args.preset, quant, agree if agree is not None else 1.0,
                                             phases if agree is None else None, args.vocab)
        except MtprunError as exc:
            print(f"error: {cell}: {exc}", file=sys.stderr)
            return 2
        # a phase cell generates at least two turns of its cycle: every phase, twice
        n_tokens = args.tokens if agree is not None else max(args.tokens, 2 * cycle)
        base = dict(path=path, draft_path=draft, n_ctx=args.ctx, n_threads=args.threads, flash_attn=False)
        with Engine(ModelConfig(**base, mtp=False)) as plain_eng, Engine(ModelConfig(**base)) as mtp_eng:
            prompts = [mtp_eng.tokenize(t) for t in texts]

            def measure(c: bm.Configuration) -> bm.Measurement:
                if c.kind == "llama.cpp":
                    return bm.measure_reference(ref, path, texts, c.n_max, n_tokens, draft=draft,
                                                threads=args.threads, n_ctx=args.ctx)
                return bm.measure_engine(plain_eng if c.kind == "plain" else mtp_eng, prompts, c, n_tokens, sampling)

            try:
                runs = bm.run_alternating(configs, measure, args.reps)
            except MtprunError as exc:
                print(f"error: {cell}: {exc}", file=sys.stderr)
                failed = True
                break
            size = mtp_eng.info.size_bytes
        cmp = bm.compare({c.name: bm.summarize(r) for c, r in runs.by_config.items()})
        comparisons[cell] = cmp
        print(f"\n## {cell} ({path.name}, {size / 1e6:.0f} MB, {n_tokens} tokens per prompt)"
              + (" -- interrupted" if runs.interrupted else ""))
        print_cell(cell, cmp, runs)
        report["cells"][cell] = {"model": str(path), "model_bytes": size, "quant": quant, "agree": agree, "tokens": n_tokens,
                                 "phases": args.phase_spec if agree is None else None, **cmp.as_dict(),
                                 "runs": {c.name: [m.as_dict() for m in r] for c, r in runs.by_config.items()}}
        if runs.interrupted:
            interrupted = True
            break

    targets = bm.check_targets(comparisons, [c for _, a, c in cells if a is None])
    report["targets"] = [t.__dict__ | {"misses": list(t.misses)} for t in targets]
    report["interrupted"] = interrupted
    report["failed"] = failed
    print("\n## targets (issue 15)")
    for t in targets:
        state = "not measured" if t.met is None else ("met" if t.met else "MISSED")
        extra = f" (worst {t.value:.2f}x)" if t.value is not None and "median" not in t.description else (
            f" (median {t.value:.2f}x)" if t.value is not None else "")
        print(f"- {t.description}: {state}{extra}" + (f"; misses: {', '.join(t.misses)}" if t.misses else ""))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"# wrote {args.json}")
    return 1 if failed else 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
