#!/usr/bin/env python3
"""Hostile inputs against the ``mtprun`` CLI, seeded and reproducible.

Each case runs the CLI in a subprocess with a timeout and counts as handled cleanly when the
process was not killed by a signal, did not hang, printed no Python traceback, and either
succeeded or failed with an ``error:`` line and a documented exit code (not an internal error).

Case families (``--only`` picks some):
  sweep     every hyperparameter / tokenizer key of each synthetic architecture (qwen35 target,
            gemma4 target, gemma4-assistant drafter) set to 0, 1, huge, negative and a wrong type,
            arrays emptied, shortened and retyped: files the validator refuses are counted from
            the in-process check (every 10th also through ``mtprun info``); files it accepts go
            through ``mtprun info`` and a short ``run`` (drafters: with -md and found beside)
  mutate    random byte / field mutations of the GGUF header (``--mutations N`` files)
  options   absurd option values (32-bit overflow, negative, NaN, empty paths, long paths)
  template  hostile chat templates and template kwargs (time and size budgets)
  streams   closed stdout/stderr, broken pipes, unreadable prompt sources

    python scripts/fuzz_hostile.py --seed 1 --mutations 120 -j 2
prints ``N/N hostile inputs handled cleanly`` and lists the failures (exit 1 if any).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from mtprun.gguf_edit import GGUFValueType as T  # noqa: E402
from mtprun.gguf_edit import hostile_variants as _variants  # noqa: E402
from mtprun.gguf_edit import read_fields, rewrite_metadata  # noqa: E402
from mtprun.errors import ModelError  # noqa: E402
from mtprun.synth import SynthSpec, write_model  # noqa: E402
from mtprun.validate import validate_file  # noqa: E402

CLEAN_CODES = {0, 1, 2, 3, 4, 5, 130, 141}


@dataclass
class Case:
    name: str
    argv: list[str]
    stdin: bytes | None = b""
    shell: str | None = None  # run through bash (for fd redirections)
    timeout: float = 60.0
    allow_ok: bool = True  # succeeding is fine (the input was odd but usable)
    sigint_after: float | None = None  # send SIGINT this many seconds after the start
    quiet_ok: bool = False  # a failure need not print an error line (stderr is closed)
    refused: str | None = None  # already refused by the validator in this process (the message)


@dataclass
class Outcome:
    case: Case
    rc: int | None
    seconds: float
    stdout: bytes = b""
    stderr: bytes = b""
    problem: str | None = None


def mtprun_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("mtprun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mtprun"]


def judge(case: Case, rc: int | None, out: bytes, err: bytes) -> str | None:
    text = err.decode("utf-8", "replace")
    if rc is None:
        return "hang (timeout)"
    if rc < 0:
        return f"killed by signal {signal.Signals(-rc).name}"
    if "Traceback (most recent call last)" in text or "Traceback" in out.decode("utf-8", "replace"):
        return "Python traceback"
    if "internal error" in text:
        return "internal error: " + text.strip().splitlines()[-1][:200]
    if "GGML_ASSERT" in text or "terminate called" in text:
        return "llama.cpp abort text"
    if rc not in CLEAN_CODES:
        return f"exit code {rc}"
    if rc == 0 and not case.allow_ok:
        return "accepted an input that must be refused"
    if rc not in (0, 130, 141) and "error:" not in text and not case.quiet_ok:
        return f"exit {rc} without an error line"
    return None


def run_case(case: Case, env: dict[str, str]) -> Outcome:
    if case.refused is not None:
        return Outcome(case, 3, 0.0, stderr=case.refused.encode())
    t0 = time.monotonic()
    cmd = ["bash", "-c", case.shell] if case.shell else case.argv
    try:
        if case.sigint_after is not None:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            time.sleep(case.sigint_after)
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=case.timeout)
            rc = p.returncode
        else:
            p = subprocess.run(cmd, input=case.stdin, capture_output=True, timeout=case.timeout, env=env,
                               start_new_session=True)
            rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        if case.sigint_after is not None:
            p.kill()
            p.communicate()
        rc, out, err = None, exc.stdout or b"", exc.stderr or b""
    o = Outcome(case, rc, time.monotonic() - t0, out, err)
    o.problem = judge(case, rc, out, err)
    return o


# --- GGUF cases ------------------------------------------------------------------------------------

SKIP_KEYS = {"general.name", "general.type", "general.description", "general.quantization_version",
             "tokenizer.chat_template", "general.file_type"}


def sweep_keys(fields: dict) -> list[str]:
    return [k for k in fields if k not in SKIP_KEYS]


@dataclass
class Models:
    root: Path
    qwen: Path
    gemma: Path
    gemma_draft: Path


def build_models(root: Path) -> Models:
    (root / "base").mkdir(parents=True, exist_ok=True)
    q = write_model(SynthSpec(arch="qwen35", end_with_eos=True), root / "base" / "qwen.gguf")
    g = write_model(SynthSpec(arch="gemma4", agree=0.8, seed=1), root / "base" / "gemma.gguf")
    return Models(root, q.model_path, g.model_path, g.draft_path)


def gguf_cases(models: Models, *, run: bool = True, keys: list[str] | None = None) -> list[Case]:
    """The semantic sweep: one mutated file per (file, key, variant)."""
    m = mtprun_cmd()
    cases: list[Case] = []
    n_refused = 0
    root = models.root / "sweep"
    for label, src, role in (("qwen35", models.qwen, "target"), ("gemma4", models.gemma, "target"),
                             ("gemma4-assistant", models.gemma_draft, "drafter")):
        fields = read_fields(src)
        for key in (keys if keys is not None else sweep_keys(fields)):
            if key not in fields:
                continue
            for vname, typed in _variants(fields[key]):
                d = root / f"{label}-{key}-{vname}".replace("/", "_")
                d.mkdir(parents=True, exist_ok=True)
                name = f"gguf {label} {key}={vname}"
                fname = "model.gguf" if role == "target" else "mtp-model.gguf"
                # the validator reads only the header: check a sparse copy first; a refused file is
                # reported from here, and every 10th one also goes through the CLI
                probe = rewrite_metadata(src, d / fname, set={key: typed}, sparse=True)
                try:
                    validate_file(probe, role=role)
                    refused = None
                except ModelError as exc:
                    refused = str(exc)
                n_refused += refused is not None
                if refused is not None and n_refused % 10:
                    probe.unlink()
                    cases.append(Case(name + " [validator]", [], refused=refused))
                    continue
                p = rewrite_metadata(src, d / fname, set={key: typed})
                if role == "target":
                    if label == "gemma4":
                        shutil.copy(models.gemma_draft, d / "mtp-model.gguf")
                    cases.append(Case(name + " [info]", [*m, "info", str(p)], allow_ok=refused is None))
                    if run and refused is None:
                        cases.append(Case(name + " [run]", [*m, "run", "-m", str(p), "-p", "hi", "-n", "6", "--temp", "0", "-c", "64", "-t", "1"]))
                else:
                    t = d / "model.gguf"
                    shutil.copy(models.gemma, t)
                    cases.append(Case(name + " [info]", [*m, "info", str(t), "-md", str(p)], allow_ok=refused is None))
                    if run and refused is None:
                        cases.append(Case(name + " [run -md]", [*m, "run", "-m", str(t), "-md", str(p), "-p", "hi", "-n", "6", "--temp", "0", "-c", "64", "-t", "1"]))
                        cases.append(Case(name + " [run beside]", [*m, "run", "-m", str(t), "-p", "hi", "-n", "6", "--temp", "0", "-c", "64", "-t", "1"]))
    return cases


def mutation_cases(models: Models, n: int, rng: random.Random) -> list[Case]:
    """Random byte and field mutations of the header (the first KB of each file, where the
    hyperparameters live, then anywhere in the metadata section)."""
    m = mtprun_cmd()
    cases = []
    root = models.root / "mutate"
    root.mkdir(parents=True, exist_ok=True)
    sources = [models.qwen, models.gemma, models.gemma_draft]
    for i in range(n):
        src = sources[i % 3]
        data = bytearray(src.read_bytes())
        from gguf import GGUFReader

        r = GGUFReader(src)
        header_end = r.data_offset
        for _ in range(rng.choice((1, 1, 2, 4, 16))):
            how = rng.random()
            pos = rng.randrange(8, min(header_end, 4096) if rng.random() < 0.7 else header_end)
            if how < 0.5:
                data[pos] = rng.randrange(256)
            elif how < 0.8:
                data[pos] ^= 1 << rng.randrange(8)
            else:  # a 32-bit field set to an interesting value
                val = rng.choice((0, 1, 2, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 1000, 65536))
                data[pos:pos + 4] = val.to_bytes(4, "little")
        d = root / f"m{i:04d}"
        d.mkdir(exist_ok=True)
        if src == models.gemma_draft:
            shutil.copy(models.gemma, d / "model.gguf")
            (d / "mtp-model.gguf").write_bytes(data)
            argv = [*m, "run", "-m", str(d / "model.gguf"), "-md", str(d / "mtp-model.gguf")]
        else:
            (d / "model.gguf").write_bytes(data)
            argv = [*m, "run", "-m", str(d / "model.gguf")]
        cases.append(Case(f"mutate #{i} of {src.name}", argv + ["-p", "hi", "-n", "6", "--temp", "0", "-c", "64", "-t", "1"]))
    return cases


# --- option cases ----------------------------------------------------------------------------------

def option_cases(models: Models) -> list[Case]:
    m = mtprun_cmd()
    q = str(models.qwen)
    base = [*m, "run", "-m", q, "-p", "hi", "-n", "4"]
    huge = ["2147483647", "2147483648", "4294967296", "9223372036854775808", "99999999999999999999999", "-2147483649"]
    cases = []
    for opt in ("-t", "-ngl", "-n", "--top-k", "-c", "-s", "--repeat-last-n"):
        for v in huge + ["-5", "0", "1e3", "x", ""]:
            cases.append(Case(f"option {opt} {v!r}", [*base, opt, v], timeout=60))
    for opt in ("--temp", "--top-p", "--min-p", "--repeat-penalty", "--presence-penalty", "--draft-p-min"):
        for v in ("nan", "inf", "-inf", "1e308", "-1", "1e-320"):
            cases.append(Case(f"option {opt} {v!r}", [*base, opt, v]))
    for c in range(1, 12):
        cases.append(Case(f"tiny context -c {c} qwen35", [*base, "-c", str(c)]))
        cases.append(Case(f"tiny context -c {c} gemma4", [*m, "run", "-m", str(models.gemma), "-md", str(models.gemma_draft), "-p", "hi", "-n", "4", "-c", str(c)]))
    long = "/tmp/" + "a" * 5000
    cases += [
        Case("model ''", [*m, "run", "-m", "", "-p", "hi"], allow_ok=False),
        Case("model 5000-char path", [*m, "run", "-m", long, "-p", "hi"], allow_ok=False),
        Case("model 5000-char name component", [*m, "info", "/tmp/" + "b" * 300], allow_ok=False),
        Case("model /dev/zero", [*m, "run", "-m", "/dev/zero", "-p", "hi"], allow_ok=False),
        Case("model /dev/urandom", [*m, "info", "/dev/urandom"], allow_ok=False),
        Case("model a fifo-like /dev/stdin", [*m, "info", "/dev/stdin"], stdin=b"GGUF" + b"\xff" * 100, allow_ok=False),
        Case("draft /dev/null", [*base, "-md", "/dev/null"], allow_ok=False),
        Case("draft = target", [*base, "-md", q], allow_ok=False),
        Case("no-mtp with misfitting -md", [*base, "--no-mtp", "-md", str(models.gemma_draft)]),
        Case("prompt file /dev/zero", [*m, "run", "-m", q, "-f", "/dev/zero", "-n", "2"], allow_ok=False, timeout=60),
        Case("prompt file /dev/urandom", [*m, "run", "-m", q, "-f", "/dev/urandom", "-n", "2"], allow_ok=False, timeout=60),
        Case("prompt stdin /dev/zero", [], shell=f"{' '.join(m)} run -m {q} -n 2 < /dev/zero", allow_ok=False, stdin=None),
        Case("prompt invalid utf-8", [*base[:-4], "-f", "-", "-n", "2"], stdin=b"\xff\xfe hi"),
        Case("prompt NULs", [*m, "run", "-m", q, "-p", "a\x01b", "-n", "2"]),
        Case("chat-template-file /dev/zero", [*base, "--chat-template-file", "/dev/zero"], allow_ok=False, timeout=60),
        Case("chat-template-file /dev/urandom", [*base, "--chat-template-file", "/dev/urandom"], allow_ok=False, timeout=60),
        Case("kwargs nested 60000", [*base, "--chat-template-kwargs", '{"a":' + "[" * 60000 + "]" * 60000 + "}"], allow_ok=False),
        Case("kwargs not an object", [*base, "--chat-template-kwargs", "[1]"], allow_ok=False),
        Case("kwargs huge number", [*base, "--chat-template-kwargs", '{"a": 1' + "0" * 5000 + "}"]),
    ]
    return cases


# --- template cases --------------------------------------------------------------------------------

HOSTILE_TEMPLATES = {
    "nested range": "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    "lipsum": "{{ lipsum(2000000) }}",
    "power tower": "{{ ((9**1000)**1000)**1000 }}",
    "big power": "{{ 9 ** 9 ** 9 }}",
    "list repeat": "{{ ([1]*16000000)|length }}",
    "ljust": "{{ 'x'.ljust(900000000) }}",
    "format width": "{{ '{:>900000000}'.format(1) }}",
    "percent width": "{{ '%900000000d' % 1 }}",
    "format filter": "{{ '%900000000d'|format(1) }}",
    "center filter": "{{ 'x'|center(900000000) }}",
    "indent filter": "{{ ('x\n' * 1000)|indent(900000) }}",
    "string doubling": "{% set s = namespace(v='x') %}{% for i in range(40) %}{% set s.v = s.v ~ s.v %}{% endfor %}{{ s.v|length }}",
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "output flood": "{% for i in range(99999) %}{{ 'y' * 9999 }}{% endfor %}",
    "raise": "{{ raise_exception('no') }}",
    "syntax": "{% for %}",
    "attr escape": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "huge join": "{{ range(99999)|join('x' * 999) }}",
    "tojson indent": "{{ messages|tojson(indent=900000000) }}",
    "wordwrap": "{{ 'x y'|wordwrap(900000000) }}",
    "zfill": "{{ '1'.zfill(900000000) }}",
    "expandtabs": "{{ '\t'.expandtabs(900000000) }}",
    "replace blowup": "{% set s = 'x' * 9999 %}{{ s.replace('x', s) }}",
    "strftime": "{{ strftime_now('%Y' * 100000) }}",
    "empty": "",
}


def template_cases(models: Models) -> list[Case]:
    m = mtprun_cmd()
    cases = []
    d = models.root / "templates"
    d.mkdir(parents=True, exist_ok=True)
    for name, src in HOSTILE_TEMPLATES.items():
        p = d / (name.replace(" ", "_") + ".jinja")
        p.write_text(src)
        cases.append(Case(f"template {name} [file]", [*m, "run", "-m", str(models.qwen), "-p", "hi", "-n", "2", "--chat-template-file", str(p)], timeout=60))
        g = d / (name.replace(" ", "_") + ".gguf")
        rewrite_metadata(models.qwen, g, set={"tokenizer.chat_template": (T.STRING, src)})
        cases.append(Case(f"template {name} [gguf]", [*m, "run", "-m", str(g), "-p", "hi", "-n", "2"], timeout=60))
    return cases


# --- stream cases ----------------------------------------------------------------------------------

def stream_cases(models: Models) -> list[Case]:
    m = " ".join(mtprun_cmd())
    q = str(models.qwen)
    run = f"{m} run -m {q} -p hi -n 8 --temp 0"
    return [
        # stdout closed: the text cannot be written, so the run must fail (not exit 0 silently)
        Case("stdout closed", [], shell=f"{run} >&-; rc=$?; echo rc=$rc >&2; exit $rc", stdin=None, allow_ok=False),
        Case("stderr closed", [], shell=f"out=$({m} run -m /nonexistent -p hi 2>&-); rc=$?; "
             "if [ -n \"$out\" ]; then echo \"error: leaked to stdout: $out\" >&2; exit 99; fi; exit $rc", stdin=None, allow_ok=False, quiet_ok=True),
        Case("stdin closed", [], shell=f"{m} run -m {q} -n 2 <&-", stdin=None, allow_ok=False),
        Case("help | head -c 5", [], shell=f"{m} run --help | head -c 5 >/dev/null; exit ${{PIPESTATUS[0]}}", stdin=None),
        Case("run | head -c 1", [], shell=f"{run} | head -c 1 >/dev/null; exit ${{PIPESTATUS[0]}}", stdin=None),
        Case("info --json | head -c 1", [], shell=f"{m} info {q} --json | head -c 1 >/dev/null; exit ${{PIPESTATUS[0]}}", stdin=None),
        Case("stdout /dev/full", [], shell=f"{run} > /dev/full", stdin=None, allow_ok=False),
        Case("chat stdin closed", [], shell=f"{m} chat {q} <&-", stdin=None, allow_ok=False),
        Case("chat stdin /dev/zero", [], shell=f"{m} chat {q} -n 2 < /dev/zero", stdin=None, timeout=60),
    ] + [Case(f"SIGINT after {ms} ms", [*mtprun_cmd(), "run", "-m", q, "-p", "hi", "-n", "64"], sigint_after=ms / 1000)
         for ms in (100, 150, 200, 300, 500, 800)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mutations", type=int, default=60, help="random GGUF mutations")
    ap.add_argument("--only", default="sweep,mutate,options,template,streams")
    ap.add_argument("--no-run", action="store_true", help="sweep: only `mtprun info`, no `run`")
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--keep", type=Path, help="keep the generated files in this folder")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    only = set(args.only.split(","))
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mtprun-fuzz-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MTPRUN_CACHE": str(tmp / "cache"), "HF_HOME": str(tmp / "hf")}
    env.pop("MTPRUN_DEBUG", None)
    try:
        models = build_models(tmp)
        cases: list[Case] = []
        if "sweep" in only:
            cases += gguf_cases(models, run=not args.no_run)
        if "mutate" in only:
            cases += mutation_cases(models, args.mutations, rng)
        if "options" in only:
            cases += option_cases(models)
        if "template" in only:
            cases += template_cases(models)
        if "streams" in only:
            cases += stream_cases(models)
        print(f"{len(cases)} cases (seed {args.seed}), {args.jobs} at a time ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        with ThreadPoolExecutor(args.jobs) as pool:
            outcomes = list(pool.map(lambda c: run_case(c, env), cases))
        bad = [o for o in outcomes if o.problem]
        for o in bad:
            tail = o.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            print(f"FAIL {o.case.name}: {o.problem} (rc {o.rc}, {o.seconds:.1f} s) {tail[0][:200]}")
        if args.verbose:
            for o in outcomes:
                if not o.problem:
                    tail = o.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
                    print(f"ok   {o.case.name}: rc {o.rc} {o.seconds:.1f} s {tail[0][:160]}")
        slowest = max(outcomes, key=lambda o: o.seconds) if outcomes else None
        print(f"{len(outcomes) - len(bad)}/{len(outcomes)} hostile inputs handled cleanly"
              f" ({time.monotonic() - t0:.0f} s; slowest: {slowest.case.name if slowest else '-'} {slowest.seconds if slowest else 0:.1f} s)")
        return 1 if bad else 0
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
