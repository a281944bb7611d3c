#!/usr/bin/env python3
"""What a plain step costs in an engine that can draft, next to one without MTP (same file).

An engine loaded for MTP asks llama.cpp for rollback snapshots of a recurrent model's state
(n_rs_seq = the draft ceiling) and keeps the target's hidden rows; this measures what that costs a
plain step, and what `auto` costs while it decodes plainly, alternating the engines over --reps
repetitions (medians):

    python scripts/plain_step_overhead.py MODEL.gguf [--tokens 128] [--reps 7] [--threads 2]

Rows: `no MTP` (the baseline), `MTP loaded, ceiling C` (speculation off, for each --ceilings value),
`auto` (the default adaptive mode, ceiling 6). Wall time per generated token; greedy.
"""

from __future__ import annotations

import argparse
import statistics
import time

from mtprun import Engine, GenerationConfig, ModelConfig, SamplingConfig, SpecConfig


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
    rows = [("no MTP", ModelConfig(**base, mtp=False), SpecConfig(enabled=False))]
    rows += [(f"MTP loaded, ceiling {c}", ModelConfig(**base, n_draft_capacity=c), SpecConfig(enabled=False)) for c in ceilings]
    rows += [("auto", ModelConfig(**base), SpecConfig())]
    engines = [Engine(cfg) for _, cfg, _ in rows]
    times: list[list[float]] = [[] for _ in rows]
    steps: list[tuple[int, ...]] = [() for _ in rows]
    try:
        for _ in range(args.reps):
            for i, (eng, (_, _, spec)) in enumerate(zip(engines, rows)):
                eng.reset()
                prompt = eng.tokenize(args.prompt)
                gen = GenerationConfig(max_tokens=args.tokens, sampling=SamplingConfig(temperature=0.0), spec=spec)
                t0 = time.perf_counter()
                for ev in eng.generate(prompt, gen):
                    pass
                times[i].append((time.perf_counter() - t0) / max(1, len(ev.tokens)))
                steps[i] = tuple(ev.stats.steps_by_draft_length)
    finally:
        for eng in engines:
            eng.close()
    ref = statistics.median(times[0])
    print(f"{args.model}: {args.tokens} greedy tokens, medians of {args.reps} alternating repetitions")
    for (name, _, _), t, s in zip(rows, times, steps):
        med = statistics.median(t)
        print(f"  {name:24s} {med * 1e3:8.2f} ms/token  {med / ref:6.3f}x no MTP   steps by draft length {s}")


if __name__ == "__main__":
    main()
