"""`mtprun run` and `mtprun info` end to end on synthetic models: clean stdout, the --json schema,
MTP and plain decoding agreeing, the demo model, and the failures a user can cause."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from _cli_models import isolated_home, models  # noqa: F401  (fixtures)
from mtprun.cli.app import app
from mtprun.events import GenerationStats

GREEDY = ["--temp", "0"]


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


def run_json(*args: str) -> dict:
    r = invoke("run", "--json", *args)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def passage(result, n_chars: int) -> str:
    """What an oracle model says: its passage, over and over."""
    return (result.cycle_text * (n_chars // len(result.cycle_text) + 2))[:n_chars]


def test_run_writes_only_the_generated_text_to_stdout(models):
    r = invoke("run", "-m", str(models.demo.model_path), "-p", "Tell me a story", "-n", "24", *GREEDY)
    assert r.exit_code == 0, r.stderr
    text = r.stdout[:-1]
    assert r.stdout.endswith("\n") and text == passage(models.demo, len(text))
    assert len(text) > 60
    # statistics go to stderr, on one line
    stats = [line for line in r.stderr.splitlines() if "tok/s" in line]
    assert len(stats) == 1 and stats[0].startswith("24 tokens, ")
    assert "drafts accepted" in stats[0] and "tok/pass" in stats[0] and "by position" in stats[0]
    assert "tok/s" not in r.stdout


def test_stdout_of_a_real_process_is_the_text_alone(models, tmp_path):
    # a separate process, so anything llama.cpp writes to the C-level streams would show up too
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [sys.executable, "-m", "mtprun", "run", "-m", str(models.demo.model_path), "-p", "Hi", "-n", "16", *GREEDY]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    as_json = json.loads(subprocess.run([*args, "--json"], capture_output=True, text=True, env=env, timeout=120).stdout)
    assert done.stdout == as_json["text"] + "\n"
    assert "llama" not in done.stderr.lower()  # llama.cpp's own log stays silent without --verbose


def test_json_holds_text_stop_reason_and_every_statistic(models):
    d = run_json("-m", str(models.demo.model_path), "-p", "Hi", "-n", "40", "--spec-draft-n-max", "3", *GREEDY)
    assert d["text"] == passage(models.demo, len(d["text"])) and d["stop_reason"] == "length"
    assert d["reasoning"] == d["text"] and d["answer"] == ""  # its template opens <think>, the oracle never closes it
    assert d["mtp"] is True and d["spec_draft_n_max"] == 3 and d["synthetic"] is False
    s = d["stats"]
    dummy = GenerationStats(0, 0, 0.0, 0, 0.0, 0, 0, (), (), 0, 0.0, 0.0, 0.0, True)
    assert set(s) == set(dummy.as_dict())
    assert s["generated_tokens"] == 40
    assert len(s["drafted_by_position"]) == len(s["accepted_by_position"]) == len(s["acceptance_by_position"]) == 3
    assert s["drafted"] == sum(s["drafted_by_position"]) > 0
    assert s["accepted"] == sum(s["accepted_by_position"]) > 0
    assert s["acceptance"] == pytest.approx(s["accepted"] / s["drafted"])
    assert s["tokens_per_target_pass"] == pytest.approx(s["generated_tokens"] / s["target_passes"])
    assert s["tokens_per_target_pass"] > 1.0  # accepted drafts save target passes
    assert s["prompt_tokens_per_second"] > 0 and s["generation_tokens_per_second"] > 0


def test_json_says_what_the_adaptive_draft_length_did(models):
    d = run_json("-m", str(models.demo.model_path), "-p", "Hi", "-n", "40", "--spec-draft-n-max", "auto:4", *GREEDY)
    assert d["spec_draft_n_max"] == 4 and d["spec_draft_length"] == "auto:4"
    s = d["stats"]
    assert s["adaptive"] is True and s["draft_length"] == "auto:4" and s["n_max"] == 4
    steps = s["steps_by_draft_length"]
    assert len(steps) == 5 and sum(steps) == s["target_passes"]
    assert sum(n * c for n, c in enumerate(steps)) == s["drafted"]
    assert s["mean_draft_length"] == pytest.approx(s["drafted"] / s["target_passes"])
    pol = s["policy"]
    assert len(pol["acceptance_by_position"]) == 4 and all(0 <= a <= 1 for a in pol["acceptance_by_position"])
    assert len(pol["target_seconds_by_batch"]) == 5 and all(t > 0 for t in pol["target_seconds_by_batch"])
    assert pol["head_seconds"] > 0
    fixed = run_json("-m", str(models.demo.model_path), "-p", "Hi", "-n", "40", "--spec-draft-n-max", "2", *GREEDY)
    fixed_steps = fixed["stats"]["steps_by_draft_length"]
    assert fixed["stats"]["adaptive"] is False and fixed_steps[1] == 0 and fixed_steps[0] <= 1  # only the budget's last step is short
    assert fixed["text"] == d["text"]


@pytest.mark.parametrize("n_max", ["1", "3"])
def test_greedy_text_is_the_same_with_and_without_mtp(models, n_max):
    base = ["-m", str(models.demo.model_path), "-p", "Write something", "-n", "48", "--spec-draft-n-max", n_max, *GREEDY]
    mtp = run_json(*base)
    plain = run_json(*base, "--no-mtp")
    alias = run_json(*base, "--spec-type", "none")
    assert mtp["stats"]["mtp"] and mtp["stats"]["drafted"] > 0
    assert not plain["stats"]["mtp"] and plain["stats"]["drafted"] == 0 and not alias["stats"]["mtp"]
    assert mtp["text"] == plain["text"] == alias["text"]
    assert plain["stats"]["target_passes"] == 48 > mtp["stats"]["target_passes"]


def test_sidecar_drafter_gives_mtp_and_the_same_greedy_text(models):
    g = models.gemma
    base = ["-m", str(g.model_path), "-p", "Hi", "-n", "32", *GREEDY]
    mtp = run_json(*base, "-md", str(g.draft_path))
    plain = run_json(*base, "-md", str(g.draft_path), "--no-mtp")
    assert mtp["stats"]["mtp"] and mtp["stats"]["accepted"] > 0
    assert mtp["text"] == plain["text"] == passage(g, len(mtp["text"]))


def test_model_without_mtp_warns_and_runs_plain_unless_required(models):
    r = invoke("run", "-m", str(models.gemma_alone), "-p", "Hi", "-n", "8", *GREEDY)
    assert r.exit_code == 0 and r.stdout.strip()
    assert "warning: MTP is off for gemma.gguf" in r.stderr and "MTP off" in r.stderr
    r = invoke("run", "-m", str(models.gemma_alone), "-p", "Hi", "-n", "8", "--require-mtp")
    assert r.exit_code == 3 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: MTP is not available for gemma.gguf")


def test_prompt_from_stdin_or_file_gives_the_same_reply(models, tmp_path):
    base = ["-m", str(models.demo.model_path), "-n", "12", *GREEDY]
    from_arg = run_json(*base, "-p", "Tell me a story")
    f = tmp_path / "prompt.txt"
    f.write_text("Tell me a story")
    from_file = run_json(*base, "-f", str(f))
    r = invoke("run", "--json", *base, input="Tell me a story")
    assert r.exit_code == 0, r.stderr
    from_stdin = json.loads(r.stdout)
    assert from_arg["stats"]["prompt_tokens"] == from_file["stats"]["prompt_tokens"] == from_stdin["stats"]["prompt_tokens"]
    assert from_arg["text"] == from_file["text"] == from_stdin["text"]


def test_raw_skips_the_chat_template_and_sys_adds_a_system_message(models):
    from mtprun.engine import Engine
    from mtprun.config import ModelConfig

    base = ["-m", str(models.demo.model_path), "-p", "Hello", "-n", "4", *GREEDY]
    raw = run_json(*base, "--raw")
    chat = run_json(*base)
    with_sys = run_json(*base, "-sys", "You are terse.")
    with Engine(ModelConfig(path=models.demo.model_path, n_ctx=256)) as eng:
        assert raw["stats"]["prompt_tokens"] == len(eng.tokenize("Hello"))
        sys_tokens = len(eng.tokenize("You are terse.", add_special=False))
    assert chat["stats"]["prompt_tokens"] > raw["stats"]["prompt_tokens"]
    assert with_sys["stats"]["prompt_tokens"] >= chat["stats"]["prompt_tokens"] + sys_tokens


def test_enable_thinking_kwarg_reaches_the_template(models):
    base = ["-m", str(models.demo.model_path), "-p", "Hello", "-n", "6", *GREEDY]
    thinking = run_json(*base, "--chat-template-kwargs", '{"enable_thinking": true}')
    plain = run_json(*base, "--chat-template-kwargs", '{"enable_thinking": false}')
    # the prompt opened a <think> block: the whole (never closed) reply is reasoning
    assert thinking["reasoning"] == thinking["text"] and thinking["answer"] == ""
    assert plain["answer"] == plain["text"] and plain["reasoning"] == ""
    assert plain["stats"]["prompt_tokens"] > thinking["stats"]["prompt_tokens"]  # "<think>\n\n</think>\n\n"


def test_prompt_longer_than_the_context_exits_4(models):
    r = invoke("run", "-m", str(models.demo.model_path), "-c", "64", "-p", "word " * 200, "-n", "4")
    assert r.exit_code == 4, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "context" in lines[-1]
    assert r.stdout == "" and "Traceback" not in r.stderr


def test_file_that_is_not_gguf_exits_3(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all" * 100)
    r = invoke("run", "-m", str(junk), "-p", "hi")
    assert r.exit_code == 3
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and r.stdout == ""


def test_failing_chat_template_names_the_model_and_the_template(models, tmp_path):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{{ raise_exception('this template rejects everything') }}")
    r = invoke("run", "-m", str(models.demo.model_path), "-p", "hi", "--chat-template-file", str(bad))
    assert r.exit_code == 3 and r.stdout == ""
    line = r.stderr.strip().splitlines()[-1]
    assert models.demo.model_path.name in line and "bad.jinja" in line and "rejects everything" in line
    good = tmp_path / "good.jinja"
    good.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    d = run_json("-m", str(models.demo.model_path), "-p", "Hello", "-n", "4", "--chat-template-file", str(good))
    assert d["stats"]["prompt_tokens"] == run_json("-m", str(models.demo.model_path), "-p", "Hello", "-n", "4", "--raw")["stats"]["prompt_tokens"]


def test_demo_model_is_built_once_cached_and_labelled_synthetic(tmp_path):
    cache = tmp_path / "mtprun-cache"
    first = invoke("run", "--demo", "-p", "Hi", "-n", "8", *GREEDY)
    assert first.exit_code == 0, first.stderr
    assert "building the synthetic demo model" in first.stderr
    assert "synthetic demo model" in first.stderr and "not a real LLM" in first.stderr
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".gguf"  # no partial file left behind
    second = invoke("run", "--demo", "-p", "Hi", "-n", "8", *GREEDY)
    assert second.exit_code == 0 and "building" not in second.stderr
    assert second.stdout == first.stdout and second.stdout.strip()
    d = json.loads(invoke("run", "--demo", "-p", "Hi", "-n", "8", "--json", *GREEDY).stdout)
    assert d["synthetic"] is True and d["model"] == "synthetic demo model" and d["stats"]["mtp"]


def test_demo_replies_end_by_themselves(models):
    d = json.loads(invoke("run", "--demo", "-p", "Hi", "--json", *GREEDY).stdout)
    assert d["stop_reason"] == "eos" and d["text"] == models.demo.cycle_text


def test_info_reports_mtp_template_and_backend(models):
    r = invoke("info", str(models.demo.model_path))
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    assert "qwen35" in out and "embedded MTP layers" in out and "backend" in out and "CPU" in out
    d = json.loads(invoke("info", str(models.demo.model_path), "--json").stdout)
    assert d["architecture"] == "qwen35" and d["mtp"] == "embedded" and d["mtp_active"]
    assert d["chat_template"] is True and d["chat_template_thinking"] is True
    assert d["context_train"] == 4096 and d["size_bytes"] == models.demo.model_bytes
    assert d["quantization"] == models.demo.spec.dtype.upper() and d["name"] == models.demo.spec.name
    g = json.loads(invoke("info", str(models.gemma.model_path), "-md", str(models.gemma.draft_path), "--json").stdout)
    assert g["mtp"] == "sidecar" and g["draft_path"] == str(models.gemma.draft_path) and g["mtp_active"]
    assert g["size_bytes"] == models.gemma.model_bytes and g["draft_size_bytes"] == models.gemma.draft_bytes
    alone = json.loads(invoke("info", "-m", str(models.gemma_alone), "--json").stdout)
    assert alone["mtp"] == "none" and not alone["mtp_active"] and "sidecar" in alone["mtp_note"]


def test_drafter_beside_a_local_model_is_found_without_md(models):
    r = invoke("run", "--json", "-m", str(models.gemma_pair), "-p", "Hi", "-n", "16", *GREEDY)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["stats"]["mtp"]
    assert "MTP: drafter mtp-gemma.gguf found beside the model" in r.stderr
    plain = invoke("run", "--json", "-m", str(models.gemma_pair), "-p", "Hi", "-n", "16", "--no-mtp", *GREEDY)
    assert not json.loads(plain.stdout)["stats"]["mtp"] and "drafter" not in plain.stderr


def test_ctrl_c_stops_a_one_shot_run_with_its_text_and_statistics(models):
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [sys.executable, "-m", "mtprun", "run", "-m", str(models.endless.model_path), "-p", "Hi", "-n", "3000",
            "-c", "4096", "-t", "1", *GREEDY]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.read(20)  # the reply is streaming
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    err = err.decode()
    assert proc.returncode == 130, err
    assert "stopped: interrupted" in err and "Traceback" not in err
    n = int(err.split(" tokens, ")[0].rsplit("\n", 1)[-1])
    assert 0 < n < 3000


def test_of_several_drafters_beside_a_model_the_one_named_after_it_is_used(models, tmp_path):
    import shutil

    shutil.copy(models.gemma.model_path, tmp_path / "a.gguf")
    shutil.copy(models.gemma.draft_path, tmp_path / "mtp-a.gguf")
    shutil.copy(models.gemma.draft_path, tmp_path / "mtp-other.gguf")
    r = invoke("run", "--json", "-m", str(tmp_path / "a.gguf"), "-p", "Hi", "-n", "8", *GREEDY)
    assert r.exit_code == 0 and json.loads(r.stdout)["stats"]["mtp"], r.stderr
    assert "drafter mtp-a.gguf found" in r.stderr
    (tmp_path / "mtp-a.gguf").unlink()
    (tmp_path / "mtp-b.gguf").write_bytes((tmp_path / "mtp-other.gguf").read_bytes())
    r = invoke("run", "--json", "-m", str(tmp_path / "a.gguf"), "-p", "Hi", "-n", "8", *GREEDY)
    assert "several MTP drafters" in r.stderr and not json.loads(r.stdout)["stats"]["mtp"]
