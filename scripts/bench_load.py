#!/usr/bin/env python3
"""How decoding degrades on a loaded machine: plain and MTP (auto) tok/s with and without one
busy process per core, by thread count and OpenMP wait policy, in one run with alternating
configurations (each in a fresh process, since libgomp reads its environment once).

    python scripts/bench_load.py                     # a synthetic memory-bound model
    python scripts/bench_load.py --model m.gguf --tokens 128 --reps 3

The wait policy: llama-cpp-python's libggml-cpu is built with OpenMP, whose threads spin at a
barrier before they sleep (ggml's own threadpool ``poll`` level does not apply to that build).
A spinning thread takes the core a busy neighbour process would otherwise give up, and waits
on a thread that is not running: the run stalls. ``passive`` makes waiting threads sleep.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from mtprun import Engine, ModelConfig, GenerationConfig, SamplingConfig, SpecConfig
path, threads, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = {}
with Engine(ModelConfig(path=path, n_threads=threads, flash_attn=False, n_ctx=1024)) as eng:
    prompt = eng.tokenize(" Once upon a quiet")
    for name, spec in (("plain", SpecConfig(enabled=False)), ("auto", SpecConfig()), ("plain", SpecConfig(enabled=False)), ("auto", SpecConfig())):
        eng.reset()
        r = list(eng.generate(prompt, GenerationConfig(max_tokens=tokens, sampling=SamplingConfig(temperature=0), spec=spec)))[-1]
        out[name] = max(out.get(name, 0), r.stats.generation_tps)  # the second run: warm
print(json.dumps(out))
"""


def busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="GGUF with MTP layers (default: a synthetic qwen35 oracle, agree 0.8)")
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--policies", nargs="+", default=["default", "passive"])
    ap.add_argument("--timeout", type=float, default=120, help="seconds per configuration; a stalled one counts as 0 tok/s")
    args = ap.parse_args()

    model = args.model
    if model is None:
        from mtprun.synth import SynthSpec, write_model

        model = Path("/tmp/mtprun-bench-load.gguf")
        if not model.exists():
            write_model(SynthSpec.preset("tiny", arch="qwen35", mode="oracle", agree=0.8, n_embd=1024, n_vocab=2048, dtype="f16"), model)
    n_cores = os.cpu_count() or 1
    results: dict[tuple, list[dict]] = {}
    for rep in range(args.reps):
        for load in (0, n_cores):
            hogs = busy(load)
            time.sleep(0.5)
            try:
                for policy in args.policies:
                    for t in args.threads:
                        env = dict(os.environ)
                        env.pop("OMP_WAIT_POLICY", None)
                        env.pop("GOMP_SPINCOUNT", None)
                        env["MTPRUN_OMP_WAIT_POLICY"] = policy
                        try:
                            done = subprocess.run([sys.executable, "-c", CHILD, str(model), str(t), str(args.tokens)],
                                                  capture_output=True, text=True, env=env, timeout=args.timeout)
                        except subprocess.TimeoutExpired:  # a stalled run counts as 0 tok/s
                            got = {"plain": 0.0, "auto": 0.0}
                        else:
                            if done.returncode != 0:
                                sys.exit(done.stderr)
                            got = json.loads(done.stdout.strip().splitlines()[-1])
                        print(f"# {policy} -t {t} load {load}: {got}", flush=True)
                        results.setdefault((policy, t, load), []).append(got)
            finally:
                for h in hogs:
                    h.kill()
                    h.wait()
    print(f"tok/s, median of {args.reps}; load = busy processes ({n_cores} cores); ratio = loaded / idle")
    print(f"{'wait policy':12} {'-t':>3} {'plain idle':>11} {'plain load':>11} {'ratio':>6} {'auto idle':>10} {'auto load':>10} {'ratio':>6}")
    for policy in args.policies:
        for t in args.threads:
            row = []
            for name in ("plain", "auto"):
                idle = statistics.median(r[name] for r in results[(policy, t, 0)])
                loaded = statistics.median(r[name] for r in results[(policy, t, n_cores)])
                row += [idle, loaded, loaded / idle if idle else float("nan")]
            print(f"{policy:12} {t:3d} {row[0]:11.1f} {row[1]:11.1f} {row[2]:6.2f} {row[3]:10.1f} {row[4]:10.1f} {row[5]:6.2f}")


if __name__ == "__main__":
    main()
