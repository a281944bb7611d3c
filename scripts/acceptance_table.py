#!/usr/bin/env python3
"""Draft acceptance measured through mtprun's engine on the tiny synthetic oracle models.

For each architecture and MTP agreement P in {1.0, 0.7, 0.3}: 600 greedy tokens with n_max 1 and 3,
printing accepted/drafted, the conditional acceptance at each draft position (accepted at i given
accepted at i-1) and tokens per target pass. Runs in a few seconds.

    python scripts/acceptance_table.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mtprun import GenerationConfig, ModelConfig, SamplingConfig, SpecConfig
from mtprun.engine import Engine
from mtprun.events import Result
from mtprun.synth import SynthSpec, write_model


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("qwen35", "gemma4"):
            for agree in (1.0, 0.7, 0.3):
                m = write_model(SynthSpec(arch=arch, mode="oracle", agree=agree), Path(tmp) / f"{arch}-{agree}.gguf")
                cfg = ModelConfig(path=m.model_path, draft_path=m.draft_path, flash_attn=False, n_threads=1, n_ctx=1024)
                with Engine(cfg) as eng:
                    prompt = eng.tokenize(" Once upon a quiet")
                    cells = []
                    for n_max in (1, 3):
                        eng.reset()
                        gen = GenerationConfig(max_tokens=600, sampling=SamplingConfig(temperature=0), spec=SpecConfig(n_max=n_max, adaptive=False))
                        s = [e for e in eng.generate(prompt, gen) if isinstance(e, Result)][0].stats
                        acc = s.accepted_by_position
                        cond = [acc[0] / s.drafted_by_position[0]] + [acc[i] / acc[i - 1] if acc[i - 1] else 0.0 for i in range(1, len(acc))]
                        cells.append(f"n_max={n_max}: {s.n_accepted}/{s.n_drafted} ({s.acceptance:.1%}), conditional by position "
                                     f"{' '.join(f'{c:.2f}' for c in cond)}, {s.tokens_per_pass:.2f} tok/pass")
                print(f"{arch} P={agree}: " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
