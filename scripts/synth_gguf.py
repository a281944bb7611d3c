#!/usr/bin/env python3
"""Write a synthetic GGUF model (see ``mtprun.synth``): a thin command-line wrapper.

    python scripts/synth_gguf.py --arch qwen35 --mode oracle --agree 0.7 --out m.gguf
    python scripts/synth_gguf.py --arch gemma4 --mode oracle --agree 0.7 --out g.gguf   # + mtp-g.gguf
    python scripts/synth_gguf.py --preset bench --arch qwen35 --mode random --out bench.gguf
    python scripts/synth_gguf.py --preset bench --quant Q4_K_M --agree 0.7 --out bench-q4km.gguf
    python scripts/synth_gguf.py --agree-phases 40:0.95,40:0.2 --n-embd 512 --out phases.gguf
    python scripts/synth_gguf.py --preset bench --arch qwen35moe --agree 0.8 --out moe.gguf   # experts
    python scripts/synth_gguf.py --arch hy_v3 --head-agree 0.9 0.6 0.3 --out heads.gguf     # 3 chained heads

Prints one summary line. Bad input: one ``error: ...`` line on stderr, exit status 2, nothing written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    try:
        from mtprun import synth
        from mtprun.errors import InvalidInputError
    except ImportError as exc:  # running from a checkout without mtprun installed
        if exc.name not in ("mtprun", "mtprun.synth", "mtprun.errors"):
            raise
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
        from mtprun import synth
        from mtprun.errors import InvalidInputError
except ModuleNotFoundError as exc:  # numpy or gguf
    print(f"error: missing Python package {exc.name!r} (pip install numpy gguf)", file=sys.stderr)
    raise SystemExit(1) from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    p = _Parser(description="Write a synthetic GGUF model for mtprun's tests and benchmarks.")
    p.add_argument("--arch", default="qwen35", help="qwen35 (embedded MTP block), gemma4 (+ mtp-<name>.gguf drafter), "
                   "qwen35moe (experts, MoE MTP block) or hy_v3 (dense, one or more chained MTP heads)")
    p.add_argument("--mode", default="oracle", help="oracle (predictable cycle, MTP agrees with probability --agree) or random")
    p.add_argument("--agree", type=float, default=1.0, help="oracle: fraction of tokens on which the MTP head drafts correctly (0..1)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives byte-identical files")
    p.add_argument("--preset", default="tiny", help="tiny (default, a few MB) or bench (>= 300 MB of f16 weights)")
    p.add_argument("--n-embd", type=int, help="hidden size (multiple of 64)")
    p.add_argument("--n-layer", type=int, help="number of trunk layers (>= 2)")
    p.add_argument("--n-vocab", type=int, help="vocabulary size")
    p.add_argument("--n-ff", type=int, help="feed-forward size (multiple of 32; default 1.5 n_embd)")
    p.add_argument("--draft-n-embd", type=int, help="gemma4 drafter hidden size (multiple of 64)")
    p.add_argument("--n-ctx", type=int, help="training context length written to the model")
    p.add_argument("--dtype", help="f32, f16 or q8_0 (norms and small tensors stay f32)")
    p.add_argument("--quant", help="quantize with llama.cpp's quantizer: " + ", ".join(synth.QUANTS)
                   + " (gemma4's drafter too; row sizes must be multiples of the block size, 256 for K-quants)")
    p.add_argument("--agree-phases", metavar="LEN:AGREE,...",
                   help="agreement in stretches along the cycle, repeated (e.g. 40:0.95,40:0.2); replaces --agree")
    p.add_argument("--n-expert", type=int, help="qwen35moe: routed experts (default 8)")
    p.add_argument("--n-expert-used", type=int, help="qwen35moe: experts per token (default 2)")
    p.add_argument("--n-ff-exp", type=int, help="qwen35moe: expert (and shared expert) FFN size")
    p.add_argument("--head-agree", type=float, nargs="+", help="hy_v3: one agreement per chained MTP head, e.g. 0.9 0.6 0.3")
    p.add_argument("--out", required=True, help="output .gguf path (gemma4 also writes mtp-<name> beside it)")
    a = p.parse_args(argv)

    overrides = {k: v for k, v in dict(
        arch=a.arch, mode=a.mode, agree=a.agree, seed=a.seed, n_embd=a.n_embd, n_layer=a.n_layer,
        n_vocab=a.n_vocab, n_ctx=a.n_ctx, n_ff=a.n_ff, draft_n_embd=a.draft_n_embd, dtype=a.dtype, quant=a.quant,
        n_expert=a.n_expert, n_expert_used=a.n_expert_used, n_ff_exp=a.n_ff_exp,
        head_agree=tuple(a.head_agree) if a.head_agree else None,
    ).items() if v is not None}
    try:
        if a.agree_phases is not None:
            overrides["agree_phases"] = synth.parse_agree_phases(a.agree_phases)
        spec = synth.SynthSpec.preset(a.preset, **overrides)
        result = synth.write_model(spec, a.out)
    except InvalidInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
