"""``mtprun download``: the plan, the JSON for scripts, the local paths, and one-line errors."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hub_fixtures import *  # noqa: F403  (fixtures: hub, hf_env, fake_hub)
from hub_fixtures import REPOS, big_gguf, cli_env, model_gguf, run_cli
from hub_server import FakeHub, closed_port_endpoint
from mtprun.cli.app import app

GEMMA = "unsloth/gemma-4-12b-it-GGUF"
QWEN = "unsloth/Qwen3.6-27B-MTP-GGUF"


@pytest.fixture
def cli(hub: FakeHub, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, ["download", *args])

    return invoke


def test_dry_run_prints_the_plan_with_sizes_and_reasons_and_downloads_nothing(cli, hub: FakeHub) -> None:
    res = cli(f"{GEMMA}:UD-Q4_K_XL", "--mmproj", "--dry-run")
    assert res.exit_code == 0, res.stderr
    out = res.stdout
    assert "gemma-4-12b-it-UD-Q4_K_XL.gguf" in out and "matches quant 'UD-Q4_K_XL'" in out
    assert "mtp-gemma-4-12b-it-Q8_0.gguf" in out and "closest to the 'UD-Q4_K_XL' quant (4-bit)" in out
    assert "mmproj-BF16.gguf" in out and "total" in out and "kB" in out
    assert not hub.seen("cdn") and not [r for r in hub.requests if "/resolve/" in r.path]


def test_dry_run_json_is_the_plan_alone(cli, hub: FakeHub) -> None:
    res = cli(f"{QWEN}:UD-Q8_K_XL", "--dry-run", "--json", "--include", "README.md")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert set(doc) == {"plan"}
    files = doc["plan"]["files"]
    assert [f["path"].split("-")[-3] for f in files["model"]] == ["00001", "00002", "00003"]
    assert files["mtp"] is None and files["mmproj"] is None
    assert [f["path"] for f in files["extra"]] == ["README.md"]
    assert doc["plan"]["commit"] == hub.repos[QWEN].sha and doc["plan"]["total_size"] > 0


def test_download_prints_local_paths_on_stdout_and_the_rest_on_stderr(cli, hub: FakeHub) -> None:
    res = cli(f"{GEMMA}:UD-Q4_K_XL")
    assert res.exit_code == 0, res.stderr
    lines = [line.split("\t") for line in res.stdout.splitlines()]
    assert [role for role, _ in lines] == ["model", "mtp"]
    assert all(Path(path).is_file() for _, path in lines)
    assert Path(lines[0][1]).read_bytes() == REPOS[GEMMA]["files"]["gemma-4-12b-it-UD-Q4_K_XL.gguf"]
    assert "downloading gemma-4-12b-it-UD-Q4_K_XL.gguf" in res.stderr
    assert "MTP: drafter mtp-gemma-4-12b-it-Q8_0.gguf" in res.stderr
    again = cli(f"{GEMMA}:UD-Q4_K_XL")
    assert "already downloaded: gemma-4-12b-it-UD-Q4_K_XL.gguf" in again.stderr and again.stdout == res.stdout


def test_json_after_download_has_plan_local_paths_and_what_the_model_offers(cli, hub: FakeHub) -> None:
    res = cli(f"{GEMMA}:Q8_0", "--json", "--mmproj")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["plan"]["files"]["mtp"]["path"] == "mtp-gemma-4-12b-it-Q8_0.gguf"
    assert Path(doc["local"]["model"]).is_file() and Path(doc["local"]["mtp"]).is_file()
    assert Path(doc["local"]["mmproj"]).name == "mmproj-BF16.gguf"
    assert doc["mtp"] == "sidecar" and doc["model_info"]["architecture"] == "gemma4"

    qwen = json.loads(cli(f"{QWEN}:Q4_K_M", "--json").stdout)
    assert qwen["mtp"] == "embedded" and qwen["model_info"]["nextn_predict_layers"] == 1


def test_no_mtp_skips_the_sidecar(cli) -> None:
    doc = json.loads(cli(f"{GEMMA}:Q8_0", "--json", "--no-mtp").stdout)
    assert doc["plan"]["files"]["mtp"] is None and doc["local"]["mtp"] is None and doc["mtp"] == "off"


def test_a_model_without_any_mtp_gets_a_warning_that_mtp_will_be_off(cli) -> None:
    res = cli("acme/plain-GGUF")
    assert res.exit_code == 0
    assert "warning: no MTP drafter for plain-Q4_K_M.gguf" in res.stderr and "MTP will be off" in res.stderr


def test_gated_repo_plan_says_access_is_needed(cli) -> None:
    res = cli("acme/gated-GGUF", "--dry-run")
    assert res.exit_code == 0 and "acme/gated-GGUF is gated: downloading needs accepted access" in res.stderr


def test_offline_flag_uses_the_cache_after_the_hub_is_gone(cli, hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    first = cli(f"{GEMMA}:UD-Q4_K_XL")
    hub.close()
    monkeypatch.setenv("HF_ENDPOINT", closed_port_endpoint())
    res = cli(f"{GEMMA}:UD-Q4_K_XL", "--offline")
    assert res.exit_code == 0, res.stderr
    assert res.stdout == first.stdout and "from the cache" in res.stderr


def test_local_dir_option(cli, tmp_path: Path) -> None:
    res = cli(f"{GEMMA}:Q8_0", "--local-dir", str(tmp_path / "dl"), "--no-mtp")
    assert res.exit_code == 0, res.stderr
    assert res.stdout == f"model\t{tmp_path / 'dl' / 'gemma-4-12b-it-Q8_0.gguf'}\n"


def test_untrusted_names_are_printed_without_control_characters(cli, hub: FakeHub) -> None:
    hub.add_repo("evil/escape-GGUF", {"\x1b]0;pwned\x07x-Q8_0.gguf": model_gguf("esc"), "ok-Q8_0.gguf": model_gguf("ok2")})
    res = cli("evil/escape-GGUF", "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert "\x1b" not in res.stderr + res.stdout and "\x07" not in res.stderr + res.stdout
    assert "ignored 1 unsafe file name" in res.stderr


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["nope"], 2, "error: invalid Hugging Face model 'nope': expected OWNER/NAME[:QUANT]"),
        ([f"{GEMMA}:Q3_K_S"], 5, "available: BF16, IQ4_XS, Q4_K_M, Q5_K_M, Q8_0, UD-Q2_K_XL, UD-Q4_K_XL"),
        (["acme/nothing-here"], 5, "error: repository acme/nothing-here not found"),
        (["acme/private-GGUF"], 5, "log in with `hf auth login` or set HF_TOKEN"),
        (["acme/gated-GGUF"], 5, "error: acme/gated-GGUF is gated: accept its conditions at"),
        (["acme/safetensors-only"], 5, "error: no GGUF model file in acme/safetensors-only"),
        (["evil/hostile-GGUF:Q8_0"], 5, "error: refusing remote file name 'nested/../inside-Q8_0.gguf'"),
        ([f"{QWEN}:Q8_0", "--offline"], 5, "is not in the cache"),
        ([f"{GEMMA}:Q8_0", "--revision", "nope"], 5, "error: revision 'nope' not found"),
    ],
)
def test_each_failure_is_one_line_on_stderr_with_an_exit_code(cli, args: list[str], code: int, message: str) -> None:
    res = cli(*args)
    assert res.exit_code == code
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert message in lines[-1] and lines[-1].startswith("error: ")
    assert "Traceback" not in res.stderr


def test_errors_from_the_real_entry_point_are_one_line_without_traceback(hub: FakeHub) -> None:
    res = run_cli("download", f"{GEMMA}:Q4_K_M(", "--json")
    assert res.returncode == 5 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        "error: no model file in unsloth/gemma-4-12b-it-GGUF matches quant 'Q4_K_M('; "
        "available: BF16, IQ4_XS, Q4_K_M, Q5_K_M, Q8_0, UD-Q2_K_XL, UD-Q4_K_XL"
    ]
    down = run_cli("download", f"{GEMMA}:Q8_0", HF_ENDPOINT=closed_port_endpoint())
    assert down.returncode == 5 and down.stderr.count("\n") == 1
    assert down.stderr.startswith("error: cannot reach http://127.0.0.1:")


def test_a_terminal_sees_a_progress_bar_for_each_transfer(hub: FakeHub) -> None:
    hub.add_repo("acme/big-GGUF", {"big-Q8_0.gguf": big_gguf("big")})
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtprun", "download", "acme/big-GGUF"],
        env=cli_env(), stdout=subprocess.PIPE, stderr=follower, text=True,
    )
    os.close(follower)
    seen = b""
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        seen += data
    out, _ = proc.communicate(timeout=60)
    os.close(leader)
    assert proc.returncode == 0
    text = seen.decode(errors="replace")
    assert "big-Q8_0.gguf: 100%" in text and "25.2M/25.2M" in text
    assert out.startswith("model\t")  # stdout stays clean for scripts


def test_resolve_files_is_the_one_call_run_and_chat_need(hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    from mtprun.cli._model import resolve_files
    from mtprun.cli._options import ModelSource
    from mtprun.cli.ui import Output

    files = resolve_files(Output(), ModelSource(hf_repo=f"{QWEN}:Q4_K_M"))
    assert files.path.name == "Qwen3.6-27B-Q4_K_M.gguf" and files.source == "hub" and files.label == f"{QWEN}:Q4_K_M"
    assert files.draft_path is None and files.mtp_source == "embedded"
    assert [n.kind for n in files.notes if n.kind.startswith("mtp")] == ["mtp-embedded"]
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing on stdout: that is the command's product
    assert "downloading Qwen3.6-27B-Q4_K_M.gguf" in captured.err and "MTP: layers inside the model" in captured.err
