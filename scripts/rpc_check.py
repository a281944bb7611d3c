#!/usr/bin/env python3
"""mtprun across llama.cpp RPC servers vs on this machine alone, greedy, one synthetic model.

Run by scripts/rpc_check.sh (which builds the RPC-enabled llama.cpp and starts the servers) and
by tests/test_rpc.py (``check``). Six runs of the same prompt: plain, MTP drafting a fixed n (its
acceptance does not depend on timings) and MTP auto (the adaptive draft length), locally and
across the servers. Every output
must be the same tokens; the target's weights must sit on the RPC devices. Prints tok/s,
acceptance and target passes per generated token: over a network each target pass is a round trip
through every server, so passes per token is what speculation saves there.

    python scripts/rpc_check.py --rpc 127.0.0.1:50052,127.0.0.1:50053 [--preset tiny] [--tokens 64]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mtprun import ModelConfig
from mtprun.config import GenerationConfig, Placement, SamplingConfig, SpecConfig
from mtprun.engine import Engine
from mtprun.errors import MtprunError
from mtprun.events import Result
from mtprun.synth import SynthSpec, write_model

PROMPT = " Once upon a quiet morning, seven curious foxes"


@dataclass(frozen=True)
class Run:
    name: str
    tokens: tuple[int, ...]
    tps: float
    acceptance: float | None
    passes_per_token: float
    head_per_token: float  # MTP-head decodes (one per draft token) per generated token
    devices: str


# the bench preset deepened as scripts/bench_engine.py does, so that the MTP head weighs ~14% of
# the target as in real MTP models rather than the ~40% of a 4-layer model (1.1 GB of f16 weights)
BENCH_SHAPE = {"n_layer": 12, "n_ff": 4096}


def build_model(model_dir: Path, preset: str, agree: float) -> Path:
    """The synthetic qwen35 oracle model with an in-model MTP head (written once per spec)."""
    shape = BENCH_SHAPE if preset == "bench" else {}
    spec = SynthSpec.preset(preset, arch="qwen35", mode="oracle", agree=agree, seed=1, dtype="f16", **shape)
    key = hashlib.sha256(repr(spec).encode()).hexdigest()[:10]
    path = model_dir / f"rpc-{preset}-{agree:g}-{key}.gguf"
    if not path.exists():
        model_dir.mkdir(parents=True, exist_ok=True)
        write_model(spec, path)
    return path


def _generate(eng: Engine, prompt: list[int], spec: SpecConfig, tokens: int) -> Result:
    gen = GenerationConfig(max_tokens=tokens, sampling=SamplingConfig(temperature=0), spec=spec)
    result = None
    for ev in eng.generate(prompt, gen):
        if isinstance(ev, Result):
            result = ev
    assert result is not None
    return result


def measure(model: Path, placement: Placement, *, label: str, tokens: int, threads: int, n_draft: int) -> list[Run]:
    """Plain and MTP (fixed n_draft) greedy runs on one engine with the given placement."""
    runs = []
    cfg = ModelConfig(path=model, n_ctx=512, n_threads=threads, flash_attn=False, n_draft_capacity=max(n_draft, 6),
                      placement=placement)
    with Engine(cfg) as eng:
        devices = ", ".join(f"{d.name}{' ' + d.description if d.description else ''}: {d.weights / 2**20:.0f} MiB"
                            for d in eng.info.devices if d.weights)
        prompt = eng.tokenize(PROMPT)
        _generate(eng, prompt, SpecConfig(enabled=False), 4)  # warm-up (first-use allocations)
        for name, spec in (("plain", SpecConfig(enabled=False)), (f"mtp n={n_draft}", SpecConfig(n_max=n_draft, adaptive=False)),
                           ("mtp auto", SpecConfig())):
            eng.reset()
            r = _generate(eng, prompt, spec, tokens)
            s = r.stats
            runs.append(Run(
                f"{label} {name}", r.tokens, s.n_generated / s.generation_seconds if s.generation_seconds else float("nan"),
                s.n_accepted / s.n_drafted if s.mtp and s.n_drafted else None,
                s.n_target_passes / max(1, s.n_generated), s.n_drafted / max(1, s.n_generated), devices,
            ))
    return runs


def check(model: Path, rpc: tuple[str, ...], *, tokens: int = 32, threads: int = 1, n_draft: int = 3,
          devices_draft: tuple[str, ...] = ()) -> tuple[list[Run], list[str]]:
    """All six runs and the problems found ([] when RPC output == local output == plain output and
    the weights are on the RPC devices)."""
    local = measure(model, Placement(), label="local", tokens=tokens, threads=threads, n_draft=n_draft)
    remote = measure(model, Placement(rpc=rpc, devices_draft=devices_draft), label="rpc", tokens=tokens,
                     threads=threads, n_draft=n_draft)
    runs = local + remote
    problems = [f"{r.name} differs from {runs[0].name} at token {_first_diff(r.tokens, runs[0].tokens)}"
                for r in runs[1:] if r.tokens != runs[0].tokens]
    if len(runs[0].tokens) != tokens:
        problems.append(f"{runs[0].name} produced {len(runs[0].tokens)} tokens, not {tokens}")
    if "RPC" not in remote[0].devices:
        problems.append(f"no weights on an RPC device ({remote[0].devices})")
    return runs, problems


def _first_diff(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def report(runs: list[Run]) -> str:
    lines = [f"{'run':14s} {'tok/s':>8s} {'accept':>7s} {'target passes/token':>20s} {'head decodes/token':>19s}  weights"]
    for r in runs:
        acc = f"{r.acceptance:.1%}" if r.acceptance is not None else "-"
        lines.append(f"{r.name:14s} {r.tps:8.1f} {acc:>7s} {r.passes_per_token:20.2f} {r.head_per_token:19.2f}  {r.devices}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rpc", required=True, help="HOST:PORT,HOST:PORT of running rpc-servers")
    ap.add_argument("--preset", default="bench", choices=["bench", "tiny"], help="synthetic model size (default bench)")
    ap.add_argument("--agree", type=float, default=0.8, help="MTP agreement of the model (default 0.8)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="client threads (the servers have their own)")
    ap.add_argument("--n-draft", type=int, default=3, help="fixed draft length of the MTP runs (default 3)")
    ap.add_argument("--device-draft", default=None, help="-devd for the RPC runs, e.g. RPC1")
    ap.add_argument("--model-dir", type=Path, default=Path.home() / ".cache" / "mtprun-rpc" / "models")
    args = ap.parse_args(argv)
    try:
        t0 = time.perf_counter()
        model = build_model(args.model_dir, args.preset, args.agree)
        rpc = Placement.parse(rpc=args.rpc).rpc
        devd = Placement.parse(device_draft=args.device_draft).devices_draft
        runs, problems = check(model, rpc, tokens=args.tokens, threads=args.threads, n_draft=args.n_draft, devices_draft=devd)
    except MtprunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"# {model.name}, {args.tokens} tokens greedy, RPC servers {', '.join(rpc)} (loopback: the figures show "
          f"RPC's overhead, not a speed-up)")
    print(report(runs))
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    if not problems:
        print(f"OK: RPC output == local output, MTP output == plain output ({time.perf_counter() - t0:.0f} s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
