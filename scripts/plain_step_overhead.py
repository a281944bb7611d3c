#!/usr/bin/env python3
"""What a plain step costs in an engine that can draft, next to one without MTP (same file).

An engine loaded for MTP asks llama.cpp for rollback snapshots of a recurrent model's state
(n_rs_seq = the draft ceiling) and keeps the target's hidden rows; this measures what that costs a
plain step, and what `auto` costs while it decodes plainly, alternating the engines over --reps
repetitions (medians):

    python scripts/plain_step_overhead.py MODEL.gguf [--tokens 128] [--reps 7] [--threads 2]

Rows: `no MTP` (the baseline), `MTP loaded, ceiling C` (speculation off, for each --ceilings value),
`auto` (the default adaptive mode, ceiling 6). Generation time per token (the engine's own
clock, prefill excluded), measured by mtprun.benchmark.measure_engine; greedy.
"""

from __future__ import annotations

import argparse
import statistics

from mtprun import Engine, ModelConfig
from mtprun.benchmark import AUTO_N_MAX, Configuration, measure_engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ceilings", default="1,6", help="draft ceilings to load the MTP engine with (default 1,6)")
    ap.add_argument("--prompt", default="Once upon a time")
    args = ap.parse_args()
    ceilings = [int(c) for c in args.ceilings.split(",") if c.strip()]

    base = dict(path=args.model, n_ctx=2048, n_threads=args.threads)
    plain, auto = Configuration("plain"), Configuration("auto", AUTO_N_MAX)
    rows = [("no MTP", ModelConfig(**base, mtp=False), plain)]
    rows += [(f"MTP loaded, ceiling {c}", ModelConfig(**base, n_draft_capacity=c), plain) for c in ceilings]
    rows += [("auto", ModelConfig(**base), auto)]
    engines = [Engine(cfg) for _, cfg, _ in rows]
    runs: list[list] = [[] for _ in rows]
    try:
        for _ in range(args.reps):
            for eng, (_, _, config), out in zip(engines, rows, runs):
                out.append(measure_engine(eng, [eng.tokenize(args.prompt)], config, args.tokens))
    finally:
        for eng in engines:
            eng.close()
    per_token = [[m.generation_seconds / max(1, m.n_generated) for m in r] for r in runs]
    ref = statistics.median(per_token[0])
    print(f"{args.model}: {args.tokens} greedy tokens, medians of {args.reps} alternating repetitions")
    for (name, _, _), t, r in zip(rows, per_token, runs):
        med = statistics.median(t)
        last = r[-1]
        drafting = last.drafted_by_position[0] if last.drafted_by_position else 0
        print(f"  {name:24s} {med * 1e3:8.2f} ms/token  {med / ref:6.3f}x no MTP   "
              f"last run: {drafting} of {last.n_target_passes} steps drafted")


if __name__ == "__main__":
    main()
