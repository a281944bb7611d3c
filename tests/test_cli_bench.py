"""`mtprun bench` end to end on the demo-shaped synthetic model (small token counts, one thread):
every configuration in the table, the --json figures and their medians, the Markdown table,
Ctrl-C, bad options, and --save / --show / --forget with `run` and `chat` using the saved setting."""

from __future__ import annotations

import json
import shutil
import statistics

import pytest

from mtprun.config import SpecConfig
from typer.testing import CliRunner

from _cli_models import isolated_home, models  # noqa: F401  (fixtures)
from mtprun import benchmark as bm
from mtprun import tuning
from mtprun.cli.app import app

FAST = ["-n", "6", "-t", "1", "-c", "1024"]


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


@pytest.fixture()
def config_home(tmp_path, monkeypatch):
    """A fresh XDG_CONFIG_HOME per test: saved settings never leak between tests."""
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


def names(n_max: list[int]) -> list[str]:
    return [c.name for c in bm.configurations(n_max)]


def bench_json(model, *args: str) -> dict:
    r = invoke("bench", "-m", str(model), *FAST, "--json", *args)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))


def test_table_has_every_configuration_a_chart_and_a_verdict(models, config_home):
    r = invoke("bench", "-m", str(models.demo.model_path), *FAST, "--n-max", "1-3", "--reps", "1")
    assert r.exit_code == 0, r.stderr
    table = r.stdout.splitlines()
    verdict = table[-1]
    for name in names([1, 2, 3]):
        rows = [ln for ln in table[:-1] if ln.split() and ln.split()[0] == name]
        assert len(rows) == 2, (name, r.stdout)  # its table row and its bar
        assert sum("█" in ln and ln.rstrip().split()[-1] == "tok/s" or "← best" in ln for ln in rows) == 1
    assert sum("*" in ln.split()[:2] for ln in table if ln.split()) == 1  # one winner marked in the table
    assert sum("← best" in ln for ln in table) == 1  # and in the chart
    assert "x plain on this machine" in verdict or verdict.startswith("plain decoding is the fastest")
    assert "n=4" not in r.stdout


def test_json_carries_all_figures_and_medians_of_the_requested_repetitions(models, config_home):
    reps = 3
    d = bench_json(models.demo.model_path, "--n-max", "1,2", "--reps", str(reps))
    assert [c["name"] for c in d["configurations"]] == names([1, 2])
    assert d["reps"] == reps and d["tokens"] == 6 and len(d["prompts"]) == len(bm.BUILTIN_PROMPTS)
    assert not d["interrupted"] and d["runs_done"] == reps * len(d["configurations"])
    plain = d["configurations"][0]
    for c in d["configurations"]:
        assert c["runs"] == reps and len(c["measurements"]) == reps
        tps = [m["tokens_per_second"] for m in c["measurements"]]
        assert c["tokens_per_second"] == pytest.approx(statistics.median(tps))
        assert c["median"]["tps_runs"] == pytest.approx(tps)
        assert c["x_plain"] == pytest.approx(c["tokens_per_second"] / plain["tokens_per_second"])
        assert c["prompt_tokens_per_second"] > 0
        assert all(m["n_generated"] == 6 * len(bm.BUILTIN_PROMPTS) for m in c["measurements"])
        if c["kind"] == "plain":
            assert c["acceptance"] is None and c["tokens_per_target_pass"] == pytest.approx(1.0)
        elif c["kind"] == "auto" and not c["acceptance"]:
            # auto drafts only where its measured costs say it pays: on a busy machine, 6 tokens
            # per prompt can all be plain steps
            assert c["tokens_per_target_pass"] >= 1.0
        else:
            assert 0 < c["acceptance"] <= 1 and len(c["acceptance_by_position"]) == c["n_max"]
            assert 1.0 < c["tokens_per_target_pass"] <= c["n_max"] + 1
    fastest = max(d["configurations"], key=lambda c: c["tokens_per_second"])
    assert d["winner"] == fastest["name"] and [c["winner"] for c in d["configurations"]].count(True) == 1
    assert d["winner_setting"] == fastest["setting"] and d["verdict"]
    assert d["machine"]["cores"] >= 1 and d["machine"]["backend"] == d["backend"]


def test_markdown_is_a_valid_table(models, config_home):
    r = invoke("bench", "-m", str(models.demo.model_path), *FAST, "--n-max", "2", "--reps", "2", "--markdown")
    assert r.exit_code == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[:7] == ["model", "size", "params", "backend", "threads", "spec", "test"] and "t/s" in head
    assert all(set(c.strip()) <= set("-:") for c in lines[1].strip("|").split("|"))
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    assert all(len(row) == len(head) for row in [*rows, lines[1].strip("|").split("|")])
    assert [row[head.index("spec")].split()[0] for row in rows] == names([2])
    assert all(row[head.index("test")] == "tg6" and "±" in row[head.index("t/s")] for row in rows)


def test_ctrl_c_prints_what_was_measured_and_exits_130(models, config_home, monkeypatch):
    real, calls = bm.measure_engine, []

    def measure(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(bm, "measure_engine", measure)
    r = invoke("bench", "-m", str(models.demo.model_path), *FAST, "--n-max", "1,2", "--reps", "2", "--json")
    assert r.exit_code == 130
    d = json.loads(r.stdout)
    assert d["interrupted"] and d["runs_done"] == 2
    assert [c["runs"] for c in d["configurations"]] == [1, 1, 0, 0]  # plain, n=1, n=2, auto
    assert "interrupted" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--n-max", "0"], "within 1..32"),
    (["--n-max", "two"], "--n-max must be"),
    (["--n-max", "4-2"], "--n-max must be"),
    (["--tokens", "0"], "--tokens must be"),
    (["--reps", "0"], "--reps must be"),
    (["--json", "--markdown"], "not both"),
    (["--save", "--forget"], "only one of"),
])
def test_bad_option_values_are_one_line_errors(models, config_home, args, message):
    r = invoke("bench", "-m", str(models.demo.model_path), *args)
    assert r.exit_code == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize("content, message", [
    ("", "has no prompts"),
    ('{"prompt": "hi"}\n{"text": "x"}\n', "line 2"),
    ('{"prompt": "hi"}\n{not json\n', "line 2: not valid JSON"),
    (b"\xff\xfe bad", "not UTF-8"),
    ("x\n" * (bm.MAX_PROMPTS + 1), "the limit is"),
])
def test_bad_prompt_files_are_one_line_errors(models, config_home, tmp_path, content, message):
    f = tmp_path / "prompts.txt"
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    r = invoke("bench", "-m", str(models.demo.model_path), "--prompts", str(f), *FAST)
    assert r.exit_code == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_prompt_files_one_per_line_or_jsonl(models, config_home, tmp_path):
    (tmp_path / "p.txt").write_text("Write a haiku.\n\nName three rivers.\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "Write a haiku."}\n{"prompt": "line one\\nline two"}\n')
    assert bm.read_prompt_file(tmp_path / "p.txt") == ["Write a haiku.", "Name three rivers."]
    assert bm.read_prompt_file(tmp_path / "p.jsonl") == ["Write a haiku.", "line one\nline two"]
    d = bench_json(models.demo.model_path, "--prompts", str(tmp_path / "p.jsonl"), "--n-max", "1", "--reps", "1")
    assert len(d["prompts"]) == 2
    assert all(m["n_prompts"] == 2 for c in d["configurations"] for m in c["measurements"])


def run_json(model, *args: str) -> dict:
    r = invoke("run", "-m", str(model), "-p", "Hi", "-n", "8", "-t", "1", "--temp", "0", "--json", *args)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_save_then_run_uses_the_saved_setting_and_forget_removes_it(models, config_home, tmp_path):
    model = tmp_path / "m.gguf"
    shutil.copy(models.demo.model_path, model)
    assert run_json(model)["spec_draft_n_max_source"] == "default"
    d = bench_json(model, "--n-max", "3,5", "--reps", "1", "--save")
    assert d["saved"] and (config_home / "mtprun" / "tuning.json").is_file()
    setting = d["winner_setting"]

    got = run_json(model)
    assert got["spec_draft_n_max_source"] == "saved" and got["saved_setting"] == setting
    if setting == "plain":
        assert not got["mtp"]
    else:
        assert got["mtp"] and got["spec_draft_n_max"] == SpecConfig.parse(setting).n_max
    r = invoke("run", "-m", str(model), "-p", "Hi", "-n", "8", "-t", "1", "--temp", "0")
    assert r.exit_code == 0 and "saved by mtprun bench" in r.stderr
    r = invoke("chat", "-m", str(model), "-n", "8", "-t", "1", "--temp", "0", input="Hi\n")
    assert r.exit_code == 0 and r.stderr.count("saved by mtprun bench") == 2  # banner and statistics line
    # a setting given on the command line wins
    given = run_json(model, "--spec-draft-n-max", "4")
    assert given["spec_draft_n_max_source"] == "option" and given["spec_draft_n_max"] == 4

    shown = json.loads(invoke("bench", "-m", str(model), "--show", "--json").stdout)
    assert [e["setting"] for e in shown["entries"]] == [setting]
    assert shown["entries"][0]["model"]["path"] == str(model.resolve())

    r = invoke("bench", "-m", str(model), "--forget")
    assert r.exit_code == 0 and "forgot 1" in r.stderr
    assert run_json(model)["spec_draft_n_max_source"] == "default"
    assert json.loads(invoke("bench", "--show", "--json").stdout)["entries"] == []


def test_a_changed_model_file_does_not_inherit_the_saved_setting(models, config_home, tmp_path):
    model = tmp_path / "m.gguf"
    shutil.copy(models.demo.model_path, model)
    bench_json(model, "--n-max", "1", "--reps", "1", "--save")
    assert run_json(model)["spec_draft_n_max_source"] == "saved"
    with open(model, "ab") as f:  # same path, another file (size differs)
        f.write(b"\0" * 32)
    assert run_json(model)["spec_draft_n_max_source"] == "default"


@pytest.mark.parametrize("content", ["{not json", '{"format": "something-else", "entries": {}}', "[1, 2]",
                                     '{"format": "mtprun-tuning/1", "entries": {"k": {"setting": "six"}}}'])
def test_a_corrupt_or_foreign_saved_file_is_ignored_with_a_warning(models, config_home, content):
    path = config_home / "mtprun" / "tuning.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    r = invoke("run", "-m", str(models.demo.model_path), "-p", "Hi", "-n", "4", "-t", "1", "--temp", "0", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["spec_draft_n_max_source"] == "default"
    warnings = [ln for ln in r.stderr.splitlines() if "ignoring the saved settings" in ln]
    assert len(warnings) == 1 and str(path) in warnings[0]
    # --save replaces it with a valid file
    d = bench_json(models.demo.model_path, "--n-max", "1", "--reps", "1", "--save")
    assert d["saved"] and tuning.Store.load(path).warning is None and len(tuning.Store.load(path).entries) == 1


def test_progress_bar_and_a_real_ctrl_c_in_a_terminal(models, config_home, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    import io
    import os
    import re
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TERM": "xterm", "COLUMNS": "160"}
    child = pexpect.spawn(sys.executable, ["-m", "mtprun", "bench", "-m", str(models.demo.model_path), "-n", "64",
                                           "--reps", "50", "--n-max", "1,2", "-t", "1"],
                          env=env, encoding="utf-8", timeout=120, dimensions=(40, 160), cwd=str(tmp_path))
    child.logfile_read = io.StringIO()
    try:
        # the progress bar: runs done of reps x configurations, ETA; Ctrl-C once some are done
        child.expect(r"\b[1-9]\d*/200\b.*ETA")  # 50 reps x (plain, n=1, n=2, auto)
        child.sendintr()
        child.expect(pexpect.EOF)
    except pexpect.ExceptionPexpect:
        pytest.fail(child.logfile_read.getvalue()[:3000])
    finally:
        child.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.logfile_read.getvalue())
    assert child.exitstatus == 130, text
    assert "interrupted: figures from" in text and "Traceback" not in text
    assert re.search(r"^plain\b.*tok/s", text, re.M) or re.search(r"^\s*plain ", text, re.M), text
