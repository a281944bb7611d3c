"""`mtprun graft`: a donor's MTP block onto a model without one, from a file or from the fake Hub
by range requests; the checks that refuse a bad pair; no OUT unless complete."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hub_fixtures import *  # noqa: F403  (fixtures: hub, hf_env, fake_hub)
from hub_fixtures import cli_env, run_cli
from hub_server import FakeHub
from mtprun.cli._errors import message as cli_message
from mtprun import Engine, GenerationConfig, ModelConfig, SamplingConfig, SpecConfig
from mtprun import graft as g
from mtprun import hub as mhub
from mtprun.errors import InvalidInputError, ModelError
from mtprun.gguf_info import header_length, read_gguf_info

REPO = "acme/synth-MTP-GGUF"
DONOR_FILE = "synth-12L-F16.gguf"
AGREE = 0.7


@pytest.fixture(scope="session")
def pair(synth_model, tmp_path_factory):
    """(donor with MTP in f16, target: the same weights without MTP in Q8_0, the donor's result).
    12 layers: the trunk dominates the file, as in real models."""
    donor = synth_model(dtype="f16", agree=AGREE, n_layer=12)
    target = tmp_path_factory.mktemp("graft") / "synth-12L-Q8_0.gguf"
    g.strip_mtp(donor.model_path, target, quantize="q8_0")
    return donor.model_path, target, donor


def greedy(path: Path, n: int = 48, spec: bool = True) -> tuple[list[int], float, str]:
    with Engine(ModelConfig(path=path, n_ctx=512)) as eng:
        cfg = GenerationConfig(max_tokens=n, sampling=SamplingConfig(temperature=0), spec=SpecConfig(enabled=spec, n_max=2, adaptive=False))
        for ev in eng.generate(eng.tokenize("Once upon"), cfg):
            pass
        return list(ev.tokens), ev.stats.acceptance, eng.info.mtp_kind


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "mtprun-cache")


# --- the result ------------------------------------------------------------------------------------
def test_target_is_q8_0_without_mtp_and_donor_f16_with_mtp(pair):
    donor, target, _ = pair
    d, t = read_gguf_info(donor), read_gguf_info(target)
    assert (d.file_type_name, d.nextn_predict_layers, d.block_count) == ("F16", 1, 13)
    assert (t.file_type_name, t.has_embedded_mtp, t.block_count) == ("Q8_0", False, 12)


def test_grafted_file_loads_and_greedy_mtp_equals_plain_target(pair, tmp_path):
    donor, target, result = pair
    out = tmp_path / "out.gguf"
    plan = g.plan_graft(target, donor, out)
    g.write_graft(plan)
    info = read_gguf_info(out)
    assert (info.block_count, info.nextn_predict_layers, info.file_type_name) == (13, 1, "Q8_0")
    assert info.tensor_count == read_gguf_info(target).tensor_count + plan.mtp_tensor_count
    plain, _, kind = greedy(target, spec=False)
    assert kind == "none"
    tokens, acceptance, kind = greedy(out)
    assert kind == "embedded"
    assert tokens == plain == result.greedy_continuation(_last_prompt_token(target), len(plain))
    _, donor_acceptance, _ = greedy(donor)
    assert acceptance == pytest.approx(donor_acceptance, abs=0.03)
    assert 0.4 < acceptance < 0.95  # the agree=0.7 head: some drafts accepted, some not


def _last_prompt_token(path: Path) -> int:
    with Engine(ModelConfig(path=path, n_ctx=128)) as eng:
        return eng.tokenize("Once upon")[-1]


def test_mtp_tensors_are_copied_byte_for_byte_in_the_donors_types(pair, tmp_path):
    import gguf

    donor, target, _ = pair
    out = tmp_path / "out.gguf"
    g.write_graft(g.plan_graft(target, donor, out))
    d = {t.name: t for t in gguf.GGUFReader(donor).tensors}
    o = {t.name: t for t in gguf.GGUFReader(out).tensors}
    t = {t.name: t for t in gguf.GGUFReader(target).tensors}
    mtp = [n for n in d if n.startswith("blk.12.")]
    assert mtp and all(n in o for n in mtp)
    for n in mtp:
        assert o[n].tensor_type == d[n].tensor_type and np.array_equal(np.asarray(o[n].data), np.asarray(d[n].data))
    assert {o[n].tensor_type.name for n in mtp if n.endswith("attn_q.weight")} == {"F16"}
    for n in t:  # MODEL's tensors unchanged (Q8_0 stays Q8_0)
        assert o[n].tensor_type == t[n].tensor_type and np.array_equal(np.asarray(o[n].data), np.asarray(t[n].data))


def test_cli_graft_writes_out_and_info_names_the_donor(pair, tmp_path):
    donor, target, _ = pair
    model = tmp_path / "Model-Q8_0.gguf"
    shutil.copy(target, model)
    r = run_cli("graft", str(model), "--mtp-from", str(donor), timeout=120)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "Model-MTP-Q8_0.gguf"  # the default name: beside MODEL, says it has MTP
    assert r.stdout == f"output\t{out}\n" and out.is_file()
    assert "grafting 1 MTP layer(s)" in r.stderr and "wrote" in r.stderr
    info = run_cli("info", str(out), "--json", timeout=120)
    assert info.returncode == 0, info.stderr
    facts = json.loads(info.stdout)
    assert facts["mtp"] == "embedded" and facts["mtp_active"]
    assert facts["mtp_provenance"]["mtp_file"] == donor.name
    assert facts["mtp_provenance"]["mtp_types"].startswith("F16")
    assert f"grafted by mtprun from {donor.name}" in facts["mtp_detail"]


def test_replace_swaps_an_existing_mtp_head(pair, synth_model, tmp_path):
    donor, target, _ = pair
    grafted = tmp_path / "grafted.gguf"
    g.write_graft(g.plan_graft(target, donor, grafted))
    perfect = synth_model(dtype="f16", agree=1.0, n_layer=12).model_path  # same trunk, a head that is always right
    out = tmp_path / "swapped.gguf"
    with pytest.raises(ModelError, match="already has 1 MTP layer.*replace") as e:
        g.plan_graft(grafted, perfect, out)
    assert "use --replace" in cli_message(e.value)
    plan = g.plan_graft(grafted, perfect, out, replace=True)
    assert plan.replaced == 1
    g.write_graft(plan)
    assert read_gguf_info(out).tensor_count == read_gguf_info(grafted).tensor_count
    plain, _, _ = greedy(target, spec=False)
    tokens, acceptance, _ = greedy(out)
    assert tokens == plain and acceptance == 1.0


# --- refusals: one line, non-zero exit, nothing written ----------------------------------------------
@pytest.fixture(scope="session")
def odd_donors(synth_model):
    return {
        "tokenizer": synth_model(dtype="f16", n_layer=12, n_vocab=1280).model_path,
        "width": synth_model(dtype="f16", n_layer=12, n_embd=320).model_path,
        "arch": synth_model(arch="gemma4", n_layer=12).model_path,
        "depth": synth_model(dtype="f16", n_layer=8).model_path,
    }


@pytest.mark.parametrize(
    "case, message, code",
    [
        ("tokenizer", "tokenizer mismatch", 3),
        ("width", r"width \(n_embd\) mismatch", 3),
        ("arch", "architecture mismatch: .* is qwen35, the donor .* is gemma4", 3),
        ("depth", "trunk depth mismatch", 3),
        ("no-mtp", "has no MTP layers", 3),
        ("has-mtp", "already has 1 MTP layer", 3),
        ("out-is-model", "is MODEL", 2),
        ("no-dir", "output directory .* does not exist", 2),
        ("unwritable", "cannot write to the output directory", 2),
    ],
)
def test_bad_pairs_are_refused_with_one_line_and_nothing_written(pair, odd_donors, tmp_path, case, message, code):
    import re

    donor, target, _ = pair
    model = tmp_path / "model.gguf"
    shutil.copy(target, model)
    out = tmp_path / "out.gguf"
    args = [str(model), "--mtp-from", str(odd_donors.get(case, donor)), "-o", str(out)]
    if case == "no-mtp":  # a second copy of the target as the donor
        shutil.copy(target, tmp_path / "other.gguf")
        args[2] = str(tmp_path / "other.gguf")
    elif case == "has-mtp":  # MODEL already carries MTP layers (and no --replace)
        shutil.copy(donor, model)
    elif case == "out-is-model":
        args[-1] = str(model)
    elif case == "no-dir":
        args[-1] = str(tmp_path / "missing" / "out.gguf")
    elif case == "unwritable":
        if os.geteuid() == 0:  # root writes anywhere a permission bit forbids: use a pseudo-filesystem
            args[-1] = "/proc/out.gguf"
        else:
            (tmp_path / "locked").mkdir(mode=0o555)
            args[-1] = str(tmp_path / "locked" / "out.gguf")
    before = listing(tmp_path)
    model_bytes = model.read_bytes()
    r = run_cli("graft", *args, timeout=120)
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert listing(tmp_path) == before  # no OUT, no temp file
    assert model.read_bytes() == model_bytes


def test_library_refuses_out_equal_to_model_and_non_gguf_names(pair, tmp_path):
    donor, target, _ = pair
    with pytest.raises(InvalidInputError, match="is MODEL"):
        g.plan_graft(target, donor, target)
    with pytest.raises(InvalidInputError, match=r"must end in \.gguf"):
        g.plan_graft(target, donor, tmp_path / "out.bin")
    with pytest.raises(ModelError, match="not a GGUF file"):
        (tmp_path / "junk.gguf").write_bytes(b"hello world, not a model at all")
        g.plan_graft(tmp_path / "junk.gguf", donor, tmp_path / "o.gguf")


def test_default_output_name_says_it_carries_mtp(tmp_path):
    assert g.default_output(tmp_path / "Qwen3.6-27B-UD-Q4_K_XL.gguf").name == "Qwen3.6-27B-MTP-UD-Q4_K_XL.gguf"
    assert g.default_output(tmp_path / "model.gguf").name == "model-MTP.gguf"


# --- streaming: bounded memory, interrupted writes, full disk -----------------------------------------
def _huge_model(target: Path, out: Path, nbytes: int) -> Path:
    """``target``'s metadata with one extra tensor of ``nbytes`` (sparse zeros: cheap to make)."""
    import gguf

    r = gguf.GGUFReader(target)
    w = gguf.GGUFWriter(out, "qwen35")
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        sub = f.types[1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), f.types[0], sub_type=sub)
    w.add_tensor_info("blk.0.filler.weight", (nbytes // 4,), np.dtype(np.float32), nbytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    start = -(-out.stat().st_size // 32) * 32
    os.truncate(out, start + nbytes)
    return out


@pytest.fixture
def huge(pair, tmp_path) -> Path:
    return _huge_model(pair[1], tmp_path / "huge.gguf", 384 << 20)


_PEAK = """
import sys
from mtprun.cli.app import main
code = main(sys.argv[1:])
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(code, hwm, file=sys.stderr)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc")
def test_peak_memory_stays_far_below_the_largest_tensor(pair, huge, tmp_path):
    out = tmp_path / "huge-mtp.gguf"
    # VmHWM: the high-water mark of this process's own memory (ru_maxrss would include the
    # pytest process it was forked from)
    r = subprocess.run([sys.executable, "-c", _PEAK, "graft", str(huge), "--mtp-from", str(pair[0]), "-o", str(out)],
                       env=cli_env(), capture_output=True, text=True, timeout=120)
    code, hwm_kb = r.stderr.strip().splitlines()[-1].split()
    assert code == "0", r.stderr
    assert out.stat().st_size > 384 << 20
    peak_mb = int(hwm_kb) / 1024
    assert peak_mb < 160, f"peak RSS {peak_mb:.0f} MB for a 384 MB tensor"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "ctrl-c"])
def test_interrupted_mid_write_leaves_no_out(pair, huge, tmp_path, sig):
    out = tmp_path / "killed.gguf"
    proc = subprocess.Popen([sys.executable, "-m", "mtprun", "graft", str(huge), "--mtp-from", str(pair[0]), "-o", str(out)],
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    hit = False
    while time.monotonic() < deadline and proc.poll() is None:
        temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        try:
            if temps and temps[0].stat().st_size > (1 << 20):
                proc.send_signal(sig)
                hit = True
                break
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    _, err = proc.communicate(timeout=60)
    if not hit:
        pytest.skip("the graft finished before it could be interrupted (machine too fast)")
    assert not out.exists()
    if sig == signal.SIGINT:  # Ctrl-C: exit 130, one line, the temp file removed
        assert proc.returncode == 130 and err.strip().splitlines()[-1] == "error: interrupted"
        assert leftovers(tmp_path) == []
    # the next graft to the same OUT clears a dead process's temp file and succeeds
    r = run_cli("graft", str(huge), "--mtp-from", str(pair[0]), "-o", str(out), timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.is_file() and leftovers(tmp_path) == []


def test_full_disk_leaves_no_out(pair, tmp_path):
    donor, target, _ = pair
    out = tmp_path / "full.gguf"

    def small_files() -> None:  # writes past 1 MB fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    r = run_cli("graft", str(target), "--mtp-from", str(donor), "-o", str(out), preexec_fn=small_files, timeout=120)
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: disk full while writing") and r.stderr.count("error") == 1
    assert not out.exists() and leftovers(tmp_path) == []


# --- a donor on the Hub: header and MTP tensors by range requests --------------------------------------
def test_header_length_needs_the_whole_header(pair):
    import gguf

    data = pair[0].read_bytes()
    n = header_length(data)
    assert n == gguf.GGUFReader(pair[0]).data_offset and n % 32 == 0
    assert header_length(data[: n // 2]) is None and header_length(data[:n]) == n
    with pytest.raises(ModelError):
        header_length(b"NOPE" + data[4:100])


@pytest.fixture(autouse=True)
def own_mtprun_cache(tmp_path, monkeypatch):
    """Each test its own mtprun cache (where ranged fetches are kept)."""
    monkeypatch.setenv("MTPRUN_CACHE", str(tmp_path / "mtprun-cache"))


def _serve_donor(hub: FakeHub, donor: Path) -> bytes:
    data = donor.read_bytes()
    hub.add_repo(REPO, {DONOR_FILE: data, "README.md": b"# synth\n"})
    return data


def test_remote_graft_fetches_a_small_part_and_equals_the_local_graft(pair, hub, tmp_path):
    donor, target, _ = pair
    data = _serve_donor(hub, donor)
    remote = tmp_path / "remote.gguf"
    r = run_cli("graft", str(target), "--mtp-from", "-hf", f"{REPO}:F16", "-o", str(remote), timeout=120)
    assert r.returncode == 0, r.stderr
    sent = hub.sent[DONOR_FILE]
    assert sent < 0.15 * len(data), f"fetched {sent} of {len(data)} bytes"
    assert f"of {REPO}/{DONOR_FILE}" in r.stderr and "fetched " in r.stderr
    # again: everything is cached, nothing is transferred
    again = tmp_path / "again.gguf"
    r = run_cli("graft", str(target), "--mtp-from", "-hf", f"{REPO}:F16", "-o", str(again), timeout=120)
    assert r.returncode == 0, r.stderr
    assert hub.sent[DONOR_FILE] == sent and again.read_bytes() == remote.read_bytes()
    # and offline too, from the same cache
    r = run_cli("graft", str(target), "-hf", f"{REPO}:F16", "--offline", "-o", str(tmp_path / "offline.gguf"), timeout=120)
    assert r.returncode == 0, r.stderr
    # the local graft from a complete download of the same file gives the same bytes
    full = mhub.fetch(f"{REPO}:F16", want_mtp=False).model
    local = tmp_path / "local.gguf"
    r = run_cli("graft", str(target), "--mtp-from", str(full), "-o", str(local), timeout=120)
    assert r.returncode == 0, r.stderr
    assert local.read_bytes() == remote.read_bytes()
    prov = {k: v for k, v in read_gguf_info(remote).scalars.items() if k.startswith("mtprun.graft.")}
    assert prov["mtprun.graft.mtp_repo"] == REPO and prov["mtprun.graft.mtp_file"] == DONOR_FILE
    assert prov["mtprun.graft.mtp_commit"] == hub.repos[REPO].sha and prov["mtprun.graft.mtp_quant"] == "F16"
    tokens, acceptance, kind = greedy(remote)
    assert kind == "embedded" and tokens == greedy(target, spec=False)[0]


def test_remote_graft_falls_back_to_a_full_download_when_ranges_are_ignored(pair, hub, tmp_path):
    donor, target, _ = pair
    data = _serve_donor(hub, donor)
    hub.ignore_ranges = True
    out = tmp_path / "fallback.gguf"
    r = run_cli("graft", str(target), "--mtp-from", "-hf", f"{REPO}:F16", "-o", str(out), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "ignored range requests: downloaded the whole donor" in r.stderr, r.stderr
    local = tmp_path / "local.gguf"
    g.write_graft(g.plan_graft(target, donor, local, provenance={
        "mtp_repo": REPO, "mtp_file": DONOR_FILE, "mtp_commit": hub.repos[REPO].sha, "mtp_quant": "F16"}))
    assert out.read_bytes() == local.read_bytes()
    assert hub.sent[DONOR_FILE] >= len(data)


def test_remote_graft_resumes_an_interrupted_transfer(pair, hub, tmp_path):
    donor, target, _ = pair
    data = _serve_donor(hub, donor)
    hub.cut(DONOR_FILE, 100_000, times=6)  # every connection of the first tries breaks early
    out = tmp_path / "resumed.gguf"
    r = run_cli("graft", str(target), "--mtp-from", "-hf", f"{REPO}:F16", "-o", str(out), timeout=120)
    assert r.returncode == 0, r.stderr
    local = tmp_path / "local.gguf"
    g.write_graft(g.plan_graft(target, donor, local, provenance={
        "mtp_repo": REPO, "mtp_file": DONOR_FILE, "mtp_commit": hub.repos[REPO].sha, "mtp_quant": "F16"}))
    assert out.read_bytes() == local.read_bytes()
    assert hub.sent[DONOR_FILE] < 0.25 * len(data)


def test_remote_errors_are_one_line(pair, hub, tmp_path):
    donor, target, _ = pair
    _serve_donor(hub, donor)
    r = run_cli("graft", str(target), "--mtp-from", "-hf", "acme/nothing-here", "-o", str(tmp_path / "o.gguf"), timeout=120)
    assert r.returncode == 5 and r.stderr.startswith("error: repository acme/nothing-here not found")
    r = run_cli("graft", str(target), "--mtp-from", "-hf", f"{REPO}:Q2_K", "-o", str(tmp_path / "o.gguf"), timeout=120)
    assert r.returncode == 5 and len(r.stderr.strip().splitlines()) == 1
    assert leftovers(tmp_path) == [] and not (tmp_path / "o.gguf").exists()
