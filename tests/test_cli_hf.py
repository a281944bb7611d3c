"""`run`, `chat` and `info` with -hf OWNER/NAME[:QUANT] against a fake Hub on 127.0.0.1 serving
runnable synthetic models (and their mtp-*.gguf drafter), and download failures as one line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from _cli_models import isolated_home, models  # noqa: F401  (fixtures)
from hub_fixtures import *  # noqa: F403  (fixtures: hub, hf_env, fake_hub)
from hub_server import FakeHub, closed_port_endpoint
from mtprun.cli.app import app

GEMMA = "acme/tiny-gemma-GGUF"
QWEN = "acme/tiny-qwen-MTP-GGUF"


@pytest.fixture
def served(hub: FakeHub, models):  # noqa: F811
    hub.add_repo(GEMMA, {
        "tiny-gemma-Q8_0.gguf": models.gemma.model_path.read_bytes(),
        "mtp-tiny-gemma-Q8_0.gguf": models.gemma.draft_path.read_bytes(),
        "README.md": b"# tiny\n",
    })
    hub.add_repo(QWEN, {"tiny-qwen-Q8_0.gguf": models.demo.model_path.read_bytes()})
    return hub


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_run_hf_downloads_the_model_and_its_drafter_and_uses_mtp(served, models):
    r = invoke("run", "-hf", f"{GEMMA}:Q8_0", "-p", "Hi", "-n", "24", "--temp", "0", "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["model"] == f"{GEMMA}:Q8_0" and d["stats"]["mtp"] and d["stats"]["accepted"] > 0
    assert d["text"] == models.gemma.cycle_text[: len(d["text"])]
    assert "MTP: drafter mtp-tiny-gemma-Q8_0.gguf" in r.stderr
    # the second time everything comes from the cache, also offline
    again = invoke("run", "-hf", f"{GEMMA}:Q8_0", "-p", "Hi", "-n", "24", "--temp", "0", "--json", "--offline")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["text"] == d["text"]


def test_run_hf_no_mtp_skips_the_drafter(served):
    r = invoke("run", "-hf", f"{GEMMA}:Q8_0", "-p", "Hi", "-n", "8", "--temp", "0", "--json", "--no-mtp")
    assert r.exit_code == 0, r.stderr
    assert not json.loads(r.stdout)["stats"]["mtp"]
    assert not [q for q in served.requests if "mtp-tiny-gemma" in q.path and q.method == "GET" and "/resolve/" in q.path]


def test_info_hf_reports_embedded_mtp(served):
    r = invoke("info", "-hf", QWEN, "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["architecture"] == "qwen35" and d["mtp"] == "embedded" and d["model"] == QWEN


@pytest.mark.parametrize(
    ("spec", "needle"),
    [("acme/does-not-exist-GGUF", "does-not-exist"), (f"{GEMMA}:IQ1_S", "IQ1_S")],
)
def test_hub_failures_are_one_line_with_exit_5(served, spec, needle):
    r = invoke("run", "-hf", spec, "-p", "Hi")
    assert r.exit_code == 5, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and needle in lines[-1] and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_unreachable_hub_is_one_line_with_exit_5(hf_env, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HF_ENDPOINT", closed_port_endpoint())
    r = invoke("chat", "-hf", f"{GEMMA}:Q8_0")
    assert r.exit_code == 5, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")


def test_offline_without_a_cached_copy_exits_5(served):
    r = invoke("run", "-hf", f"{QWEN}:Q8_0", "-p", "Hi", "--offline")
    assert r.exit_code == 5 and "error: " in r.stderr


def test_revision_and_offline_need_hf(models):
    r = invoke("run", "-m", str(models.demo.model_path), "-p", "Hi", "--offline")
    assert r.exit_code == 2 and "--revision and --offline apply to -hf models only" in r.stderr
