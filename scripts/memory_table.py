#!/usr/bin/env python3
"""Memory of mtprun's contexts vs the ones llama.cpp's own tools create, on synthetic models shaped
like Gemma 4 31B and Qwen3.6-27B in attention / recurrent geometry (few layers, small n_embd), and
the error of mtprun's header-only estimate against what llama.cpp allocated.

    python scripts/memory_table.py [--n-max N]

Shapes (per layer, as the models' cards give them):
  gemma4-31B-like : 6 layers (5 sliding-window : 1 global), 32 query heads; sliding layers 16 KV
                    heads x 256, window 1024; global layers 4 KV heads x 512 (K = V); its
                    gemma4-assistant drafter sidecar
  qwen3.6-27B-like: 4 layers (3 gated delta net : 1 gated attention) + 1 MTP layer; attention 24
                    query / 4 KV heads x 256; delta net 16 key / 48 value heads x 128, conv 4

"llama.cpp" is what its tools allocate for the same model, context and draft length (llama-cli /
llama-completion for plain decoding; llama-speculative-simple --spec-type draft-mtp with MTP):
contexts created through llama-cpp-python with common_params' defaults (tests/_llama.py
reference_memory). Figures are llama.cpp's own memory breakdown: KV cache + recurrent state +
compute buffers of all contexts, in MiB (weights are left out: the synthetic models' are tiny).
Flash attention on (llama.cpp's auto on CPU and GPU). The estimate error is that of the whole MTP
run (weights included) against llama.cpp's breakdown: "header" from the GGUF headers alone
(mtprun.memory.estimate, what the GPU-fit check uses), "info" with the compute buffers from
llama.cpp's no_alloc dry run (what `mtprun info` shows). Runs in under a minute; needs ~3 GB RAM.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the llama.cpp reference driver

import _llama  # noqa: E402

from mtprun import ModelConfig  # noqa: E402
from mtprun.engine import Engine, dry_run  # noqa: E402
from mtprun.gguf_info import read_gguf_info  # noqa: E402
from mtprun.memory import estimate  # noqa: E402
from mtprun.synth import SynthSpec, write_model  # noqa: E402

SHAPES = {
    "gemma4-31B-like": dict(
        arch="gemma4", n_layer=6, n_head=32, n_head_kv=16, head_dim=256, n_head_kv_full=4, head_dim_full=512, n_swa=1024,
    ),
    "qwen3.6-27B-like": dict(
        arch="qwen35", n_layer=4, n_head=24, n_head_kv=4, head_dim=256, ssm_d_state=128, ssm_n_group=16, ssm_dt_rank=48,
    ),
}
CONTEXTS = (4096, 32768, 131072)
MIB = 2**20


def _ctx_bytes(rows) -> int:
    return sum(int(r["state"]) + int(r["compute"]) for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-max", type=int, default=3, help="draft length (recurrent snapshots, verify width)")
    args = ap.parse_args()
    n_max = args.n_max
    print(f"draft length {n_max}, flash attention on; KV + recurrent state + compute buffers of all contexts, MiB;")
    print("estimate error: of the whole MTP run (weights included), header-only / as `mtprun info` shows it")
    print(f"{'model':18} {'context':>8} | {'mtprun plain':>12} {'llama.cpp plain':>15} | {'mtprun MTP':>10} "
          f"{'llama.cpp MTP':>13} | {'MTP costs':>9} | {'MTP run':>8} {'header':>7} {'info':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape in SHAPES.items():
            spec = SynthSpec(mode="random", n_embd=256, n_vocab=1024, n_ctx=max(CONTEXTS), dtype="f16", **shape)
            model = write_model(spec, Path(tmp) / f"{name}.gguf")
            head_t = read_gguf_info(model.model_path)
            head_d = read_gguf_info(model.draft_path) if model.draft_path else None
            for n_ctx in CONTEXTS:
                ours = {}
                for mtp in (False, True):
                    cfg = ModelConfig(path=model.model_path, draft_path=model.draft_path, n_ctx=n_ctx, mtp=mtp,
                                      n_draft_capacity=n_max, flash_attn=True, n_threads=1)
                    with Engine(cfg) as eng:
                        got = eng.info.memory
                    ours[mtp] = got.state + got.compute + got.mtp_state + got.mtp_compute
                # the estimates of the MTP run (everything, weights included) against what it allocated
                est = estimate(head_t, head_d, n_ctx=n_ctx, n_draft=n_max, mtp=True, flash_attn=True)
                est_info = est.with_dry_run(dry_run(cfg))
                ref = {}
                for mtp in (False, True):
                    t, d = _llama.reference_memory(model.model_path, model.draft_path, n_ctx=n_ctx, n_max=n_max,
                                                   flash_attn=True, mtp=mtp)
                    ref[mtp] = _ctx_bytes(t) + _ctx_bytes(d)
                m = got.total
                print(f"{name:18} {n_ctx:>8} | {ours[False] / MIB:>12.1f} {ref[False] / MIB:>15.1f} | {ours[True] / MIB:>10.1f} "
                      f"{ref[True] / MIB:>13.1f} | {(ours[True] - ours[False]) / MIB:>9.1f} | {m / MIB:>8.1f} "
                      f"{(est.total - m) / m:>+7.1%} {(est_info.total - m) / m:>+7.1%}", flush=True)


if __name__ == "__main__":
    main()
