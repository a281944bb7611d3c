#!/usr/bin/env python3
"""Benchmark mtprun's engine: plain decoding vs MTP speculative decoding, in one run.

On synthetic bench-size oracle models (mtprun.synth's ``bench`` preset with 12 layers: 1.1 GB of
f16 weights) with MTP agreement 0.5 / 0.7 / 0.9, it measures
plain decoding, MTP with draft lengths 1..6 and adaptive (auto), alternating the configurations over several
repetitions (these machines are noisy) and reporting medians: tok/s, ratio to plain, acceptance,
acceptance by draft position, tokens per target pass, and where the time goes (target decodes,
MTP-head decodes, token choice, and the engine's own overhead per step).

If llama.cpp's own ``llama-speculative-simple`` is available (``--ref-bin DIR`` or
``MTPRUN_LLAMA_REF_BIN``; build it with ``scripts/build_reference.sh``), the same model and
settings run through it too, interleaved with ours, for a side-by-side figure.

    python scripts/bench_engine.py                      # full run (a few minutes on 2 cores)
    python scripts/bench_engine.py --agree 0.7 --n-max 1 2 3 --reps 3 --tokens 128
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mtprun import GenerationConfig, ModelConfig, SamplingConfig, SpecConfig
from mtprun.engine import Engine
from mtprun.events import Result
from mtprun.synth import SynthSpec, write_model


@dataclass
class Runs:
    tps: list[float] = field(default_factory=list)
    acceptance: list[float] = field(default_factory=list)
    by_pos: list[tuple[float, ...]] = field(default_factory=list)
    tokens_per_pass: list[float] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)  # wall time per target pass
    verify_ms: list[float] = field(default_factory=list)  # per step, in target decodes
    draft_ms: list[float] = field(default_factory=list)  # per step, in MTP-head decodes
    choose_ms: list[float] = field(default_factory=list)  # per step, choosing tokens
    overhead_ms: list[float] = field(default_factory=list)  # per step, everything else

    def add(self, r: Result) -> None:
        s = r.stats
        steps = max(1, s.n_target_passes)
        self.tps.append(s.generation_tps)
        self.acceptance.append(s.acceptance)
        self.by_pos.append(s.acceptance_by_position)
        self.tokens_per_pass.append(s.tokens_per_pass)
        self.step_ms.append(1e3 * s.generation_seconds / steps)
        self.verify_ms.append(1e3 * s.verify_seconds / steps)
        self.draft_ms.append(1e3 * s.draft_seconds / steps)
        self.choose_ms.append(1e3 * s.sample_seconds / steps)
        self.overhead_ms.append(1e3 * s.overhead_seconds / steps)


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# The bench preset, deepened so the MTP head (one block + the output head) weighs ~14% of the
# target as in real MTP models (Qwen3.6-27B: ~6%), rather than the ~40% of a 4-layer model.
BENCH_SHAPE = {"n_layer": 12, "n_ff": 4096}


def build_model(cache: Path, agree: float, preset: str, dtype: str | None = None) -> Path:
    shape = {**BENCH_SHAPE, **({"dtype": dtype} if dtype else {})}
    spec = SynthSpec.preset(preset, arch="qwen35", mode="oracle", agree=agree, seed=1, **shape)
    key = hashlib.sha256(repr(spec).encode()).hexdigest()[:10]
    path = cache / f"bench-qwen35-oracle-{agree:g}-{key}.gguf"
    if not path.exists():
        t0 = time.perf_counter()
        res = write_model(spec, path)
        print(f"# built {path.name}: {res.weight_bytes / 1e6:.0f} MB of weights in {time.perf_counter() - t0:.1f}s", flush=True)
    return path


def run_ours(eng: Engine, prompt: list[int], n_tokens: int, n_max: int | str | None) -> Result:
    """n_max: None plain, "auto" adaptive (ceiling 6), a number a fixed draft length."""
    if n_max == "auto":
        spec = SpecConfig()
    else:
        spec = SpecConfig(enabled=n_max is not None, n_max=n_max or 1, adaptive=False)
    cfg = GenerationConfig(max_tokens=n_tokens, sampling=SamplingConfig(temperature=0.0), spec=spec)
    eng.reset()  # same work every repetition: prefill + generation from an empty cache
    result = None
    for ev in eng.generate(prompt, cfg):
        if isinstance(ev, Result):
            result = ev
    assert result is not None
    return result


_REF_TPS = re.compile(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds, speed:\s+([\d.]+) t/s")
_REF_ACC = re.compile(r"accept\s+=\s+([\d.]+)%")


def run_ref(bin_dir: Path, model: Path, prompt: str, n_tokens: int, n_max: int, threads: int, n_ctx: int) -> tuple[float, float]:
    cmd = [
        str(bin_dir / "llama-speculative-simple"), "-m", str(model), "--spec-type", "draft-mtp",
        "--spec-draft-n-max", str(n_max), "-p", prompt, "-n", str(n_tokens), "--temp", "0",
        "-t", str(threads), "-c", str(n_ctx), "-fa", "off", "--spec-draft-p-min", "0",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    m, a = _REF_TPS.search(text), _REF_ACC.search(text)
    if out.returncode != 0 or not m:
        raise RuntimeError(f"llama-speculative-simple failed ({out.returncode}): {text[-400:]}")
    return float(m.group(3)), float(a.group(1)) / 100 if a else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agree", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    ap.add_argument("--n-max", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--preset", default="bench")
    ap.add_argument("--dtype", choices=["f32", "f16", "q8_0"], help="weight type (default: the preset's, f16)")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("MTPRUN_BENCH_CACHE", "/tmp/mtprun-bench")))
    ap.add_argument("--ref-bin", type=Path, default=os.environ.get("MTPRUN_LLAMA_REF_BIN"))
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    ref = args.ref_bin if args.ref_bin and (Path(args.ref_bin) / "llama-speculative-simple").exists() else None

    print(f"# mtprun bench: {args.tokens} tokens greedy, {args.threads} threads, ctx {args.ctx}, "
          f"{args.reps} reps (medians), flash attention off" + (f", reference {ref}" if ref else ", no reference binary"))
    prompt_text = " Once upon a quiet morning, seven curious foxes"
    for agree in args.agree:
        path = build_model(args.cache, agree, args.preset, args.dtype)
        base = ModelConfig(path=path, n_ctx=args.ctx, n_threads=args.threads, flash_attn=False)
        plain_eng = Engine(ModelConfig(**{**base.__dict__, "mtp": False}))
        mtp_eng = Engine(base)
        prompt = mtp_eng.tokenize(prompt_text)
        plain, ours, auto = Runs(), {n: Runs() for n in args.n_max}, Runs()
        theirs: dict[int, list[tuple[float, float]]] = {n: [] for n in args.n_max}
        for _ in range(args.reps):  # alternate the configurations inside each repetition
            plain.add(run_ours(plain_eng, prompt, args.tokens, None))
            auto.add(run_ours(mtp_eng, prompt, args.tokens, "auto"))
            for n in args.n_max:
                ours[n].add(run_ours(mtp_eng, prompt, args.tokens, n))
                if ref:
                    theirs[n].append(run_ref(ref, path, prompt_text, args.tokens, n, args.threads, args.ctx))
        p_tps = med(plain.tps)
        print(f"\n## agree {agree:g} ({path.name}, {mtp_eng.info.size_bytes / 1e6:.0f} MB)")
        print(f"plain: {p_tps:7.2f} tok/s, {med(plain.step_ms):6.1f} ms/token "
              f"(target {med(plain.verify_ms):.1f}, choose {med(plain.choose_ms):.2f}, overhead {med(plain.overhead_ms):.2f})")
        hdr = "n_max   tok/s  x plain  accept  tok/pass  ms/step  target  mtp-head  choose  overhead  accept by position"
        if ref:
            hdr += "  | llama.cpp tok/s  accept  ours/theirs"
        print(hdr)
        for n in args.n_max:
            r = ours[n]
            by_pos = [statistics.median(p[i] for p in r.by_pos) for i in range(n)]
            line = (f"{n:5d} {med(r.tps):7.2f} {med(r.tps) / p_tps:7.2f}x {med(r.acceptance):6.1%} {med(r.tokens_per_pass):8.2f}"
                    f" {med(r.step_ms):8.1f} {med(r.verify_ms):7.1f} {med(r.draft_ms):9.1f} {med(r.choose_ms):7.2f}"
                    f" {med(r.overhead_ms):9.2f}  " + " ".join(f"{x:.2f}" for x in by_pos))
            if ref:
                t_tps = med([t for t, _ in theirs[n]])
                t_acc = med([a for _, a in theirs[n]])
                line += f"  | {t_tps:15.2f} {t_acc:6.1%} {med(r.tps) / t_tps:10.2f}x"
            print(line, flush=True)
        best = max(args.n_max, key=lambda n: med(ours[n].tps))
        print(f" auto {med(auto.tps):7.2f} {med(auto.tps) / p_tps:7.2f}x {med(auto.acceptance):6.1%} {med(auto.tokens_per_pass):8.2f}"
              f" {med(auto.step_ms):8.1f}   | auto / best fixed (n={best}): {med(auto.tps) / med(ours[best].tps):.2f}x", flush=True)
        plain_eng.close()
        mtp_eng.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
