"""Load and run many model files in one process (for the key-sweep test): for each line
``TARGET<TAB>DRAFTER`` on stdin, load it through the engine facade, generate 4 greedy tokens, and
print ``ok``, ``refused: <message>`` (an MtprunError) or ``error: <type>``. A llama.cpp abort ends
the process: the parent sees which file was last started and restarts after it."""

from __future__ import annotations

import sys

from mtprun import GenerationConfig, ModelConfig, MtprunError, SamplingConfig
from mtprun.engine import Engine


def main() -> None:
    for line in sys.stdin:
        target, _, draft = line.rstrip("\n").partition("\t")
        print(f"start {target}", flush=True)
        try:
            cfg = ModelConfig(path=target, draft_path=draft or None, n_ctx=64, n_threads=1)
            with Engine(cfg) as eng:
                prompt = eng.tokenize("hi") or [0]
                gen = GenerationConfig(max_tokens=4, sampling=SamplingConfig(temperature=0))
                for _ in eng.generate(prompt, gen):
                    pass
            print("ok", flush=True)
        except MtprunError as exc:
            print("refused: " + " ".join(str(exc).split())[:200], flush=True)
        except Exception as exc:  # a bug of ours, reported by the test
            print(f"error: {type(exc).__name__}: {exc}"[:300], flush=True)


if __name__ == "__main__":
    main()
