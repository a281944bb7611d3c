#!/usr/bin/env python3
"""`mtprun graft -hf` against a local fake Hub: how much of the donor it downloads.

Builds a synthetic qwen35 donor with MTP in f16 (``--layers`` trunk layers, ``--preset``), makes
the same model without MTP in Q8_0 (``mtprun.graft.strip_mtp``), serves the donor on the test
suite's fake Hub (``tests/hub_server.py``, 127.0.0.1, honouring HTTP Range), runs

    mtprun graft TARGET --mtp-from -hf acme/synth-MTP-GGUF:F16 -o OUT

in a fresh cache, prints its report ("fetched X of Y"), the bytes the server actually sent, and
checks that OUT equals a graft from the complete local donor and that greedy MTP decoding of OUT
gives the target's plain output.

    python scripts/graft_hub_demo.py --layers 24
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from hub_server import FakeHub  # noqa: E402

from mtprun import GenerationConfig, ModelConfig, SamplingConfig, SpecConfig  # noqa: E402
from mtprun import graft as g  # noqa: E402
from mtprun.engine import Engine  # noqa: E402
from mtprun.gguf_info import read_gguf_info  # noqa: E402
from mtprun.synth import SynthSpec, write_model  # noqa: E402

REPO, FILE = "acme/synth-MTP-GGUF", "synth-F16.gguf"


def greedy(path: Path, spec: bool) -> list[int]:
    with Engine(ModelConfig(path=path, n_ctx=512)) as eng:
        cfg = GenerationConfig(max_tokens=64, sampling=SamplingConfig(temperature=0), spec=SpecConfig(enabled=spec))
        for ev in eng.generate(eng.tokenize("Once upon"), cfg):
            pass
        return list(ev.tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24, help="trunk layers of the synthetic model")
    ap.add_argument("--preset", default="tiny", choices=("tiny", "bench"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        donor = write_model(SynthSpec.preset(args.preset, dtype="f16", agree=0.7, n_layer=args.layers), t / "donor.gguf").model_path
        target = g.strip_mtp(donor, t / "synth-Q8_0.gguf", quantize="q8_0")
        hub = FakeHub()
        try:
            data = donor.read_bytes()
            hub.add_repo(REPO, {FILE: data})
            env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(t / "hf"), "MTPRUN_CACHE": str(t / "mtprun"),
                   "HF_HUB_DISABLE_TELEMETRY": "1"}
            env.pop("HF_HUB_OFFLINE", None)
            cmd = ["mtprun", "graft", str(target), "--mtp-from", "-hf", f"{REPO}:F16", "-o", str(t / "out.gguf")]
            print("$", " ".join(cmd[:3]), "--mtp-from -hf", f"{REPO}:F16", "-o out.gguf")
            r = subprocess.run([sys.executable, "-m", "mtprun", *cmd[1:]], env=env, capture_output=True, text=True)
            sys.stdout.write(r.stderr)
            if r.returncode:
                sys.exit(r.returncode)
            sent = hub.sent.get(FILE, 0)
            print(f"server sent {sent} of {len(data)} bytes ({100 * sent / len(data):.1f}%); "
                  f"target {target.stat().st_size} bytes, donor MTP block {g.plan_graft(target, donor, t / 'x.gguf').donor_bytes} bytes")
        finally:
            hub.close()
        out = t / "out.gguf"
        prov = {k: str(v) for k, v in (g.graft_provenance(read_gguf_info(out)) or {}).items()}
        local = g.write_graft(g.plan_graft(target, donor, t / "local.gguf", provenance=prov))
        print(f"OUT byte-identical to a graft from the complete local donor: {local.read_bytes() == out.read_bytes()}")
        same_tokens = greedy(t / "out.gguf", True) == greedy(target, False)
        print(f"greedy MTP on OUT == plain target: {same_tokens}")


if __name__ == "__main__":
    main()
