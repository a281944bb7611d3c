#!/usr/bin/env python3
"""What a plain step costs in an engine that can draft, next to one without MTP (same file).

An engine loaded for MTP asks llama.cpp for rollback snapshots of a recurrent model's state
(n_rs_seq = the draft ceiling) and keeps the target's hidden rows; `auto` adds its own work while it
decodes plainly (the policy, a probe draft every 16-128 steps). This measures both, in one process,
short greedy generations alternating engine by engine (each repetition runs every row once, in
reverse order every other time, so that a machine's slow drift falls on all rows alike):

    python scripts/plain_step_overhead.py MODEL.gguf [--tokens 64] [--reps 21] [--threads 2]

Rows: `no MTP` (the baseline), `MTP loaded, ceiling C` (speculation off, for each --ceilings value),
`auto, speculation off` and `auto` (ONE engine: the same contexts, so their ratio is auto's own cost,
free of the few percent by which separate engines of one kind differ here). Per row: generation
time per token (the engine's own clock, prefill excluded; median over repetitions) and its ratio
to `no MTP` (the median of per-repetition ratios); a plain step's lower quartile over all
repetitions (wall time between steps: robust to the preempted steps of a shared machine) and its
ratio; the target decode's share of a step and the rest; how many steps drafted (auto's probes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field

from mtprun import Engine, GenerationConfig, ModelConfig, Result, SamplingConfig, Step
from mtprun.benchmark import AUTO_N_MAX, Configuration, spec_config
from mtprun.errors import MtprunError


@dataclass
class Run:
    """One generation: the engine's own figures and the wall time of each step after the first."""

    seconds: float = 0.0
    n_generated: int = 0
    n_steps: int = 0
    decode_seconds: float = 0.0
    drafted_steps: int = 0
    plain_steps: list[float] = field(default_factory=list)  # seconds of each plain step
    draft_steps: list[float] = field(default_factory=list)  # seconds of each step that drafted


def generate(eng: Engine, prompt: list[int], config: Configuration, n_tokens: int) -> Run:
    eng.reset()
    gen = GenerationConfig(max_tokens=n_tokens, sampling=SamplingConfig(temperature=0.0), spec=spec_config(config))
    run, t_last = Run(), None
    for ev in eng.generate(prompt, gen):
        now = time.perf_counter()
        if isinstance(ev, Step):
            if t_last is not None:
                (run.draft_steps if ev.n_drafted else run.plain_steps).append(now - t_last)
            t_last = now
        elif isinstance(ev, Result):
            s = ev.stats
            run.seconds, run.n_generated, run.n_steps = s.generation_seconds, s.n_generated, s.n_target_passes
            run.decode_seconds = s.verify_seconds
            run.drafted_steps = sum(s.steps_by_draft_length[1:])
    return run


def per_token(r: Run) -> float:
    return r.seconds / max(1, r.n_generated)


def quartile(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=4)[0] if len(xs) >= 2 else (xs[0] if xs else float("nan"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ceilings", default="6", help="draft ceilings to load MTP engines with, speculation off (default 6)")
    ap.add_argument("--prompt", default="Once upon a time")
    args = ap.parse_args()
    try:
        ceilings = [int(c) for c in args.ceilings.split(",") if c.strip()]
    except ValueError:
        ap.error(f"--ceilings takes draft lengths like 1,6, not {args.ceilings!r}")
    if args.tokens < 2 or args.reps < 1:
        ap.error("--tokens must be at least 2 and --reps at least 1")
    try:
        return measure(args, ceilings)
    except MtprunError as exc:
        print(f"plain_step_overhead: {exc}", file=sys.stderr)
        return 1


def measure(args: argparse.Namespace, ceilings: list[int]) -> int:
    base = dict(path=args.model, n_ctx=2048, n_threads=args.threads)
    plain, auto = Configuration("plain"), Configuration("auto", AUTO_N_MAX)
    engines = {"none": Engine(ModelConfig(**base, mtp=False)), "auto": Engine(ModelConfig(**base))}
    rows = [("no MTP", "none", plain)]
    for c in ceilings:
        engines[f"c{c}"] = Engine(ModelConfig(**base, n_draft_capacity=c))
        rows.append((f"MTP loaded, ceiling {c}", f"c{c}", plain))
    rows += [("auto, speculation off", "auto", plain), ("auto", "auto", auto)]
    runs: list[list[Run]] = [[] for _ in rows]
    try:
        for rep in range(args.reps):
            order = list(range(len(rows)))
            for i in order if rep % 2 == 0 else order[::-1]:
                _, key, config = rows[i]
                eng = engines[key]
                runs[i].append(generate(eng, eng.tokenize(args.prompt), config, args.tokens))
    finally:
        for eng in engines.values():
            eng.close()

    def ratio(i: int, j: int) -> float:
        return statistics.median(per_token(a) / per_token(b) for a, b in zip(runs[i], runs[j]))

    # a plain step's lower quartile: the step as this machine runs it when nothing preempts it
    plain_q1 = [quartile([t for r in rr for t in r.plain_steps]) for rr in runs]
    print(f"{args.model}: {args.tokens} greedy tokens, {args.reps} alternating repetitions (medians)")
    print(f"  {'':24s} {'ms/token':>9s} {'x no MTP':>9s} {'plain step q1':>14s} {'decode':>8s} {'rest':>7s}  drafted steps")
    for i, (name, _, _) in enumerate(rows):
        r = runs[i]
        steps = [max(1, m.n_steps) for m in r]
        decode = statistics.median(1e3 * m.decode_seconds / n for m, n in zip(r, steps))
        rest = statistics.median(1e3 * (m.seconds - m.decode_seconds) / n for m, n in zip(r, steps))
        drafts = [t for m in r for t in m.draft_steps]
        draft_note = f" ({statistics.median(drafts) * 1e3:.1f} ms each)" if drafts else ""
        print(f"  {name:24s} {statistics.median(per_token(m) for m in r) * 1e3:9.2f} {ratio(i, 0):8.3f}x "
              f"{plain_q1[i] * 1e3:8.2f} {plain_q1[i] / plain_q1[0]:.3f}x {decode:8.2f} {rest:7.3f}  "
              f"{sum(m.drafted_steps for m in r)} of {sum(steps)}{draft_note}")
    a, off = len(rows) - 1, len(rows) - 2
    print(f"  auto / auto with speculation off (one engine): {ratio(a, off):.3f}x per token, "
          f"{plain_q1[a] / plain_q1[off]:.3f}x a plain step (lower quartile)")
    return 0

if __name__ == "__main__":
    sys.exit(main())
