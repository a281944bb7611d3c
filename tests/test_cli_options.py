"""Option parsing and error exits that need no model: one clear line on stderr, documented exit codes."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mtprun.cli.app import app, main


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Nothing may touch the user's home: caches point into the test's directory."""
    monkeypatch.setenv("MTPRUN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output + result.stderr
    assert result.stdout == ""
    return lines[0]


@pytest.mark.parametrize("command", ["run", "chat", "info"])
def test_a_model_is_required(command):
    r = invoke(command, "-p", "hi") if command == "run" else invoke(command)
    assert r.exit_code == 2
    assert "no model given: use -m PATH, -hf OWNER/NAME[:QUANT] or --demo" in one_error_line(r)


def test_only_one_model_source():
    r = invoke("run", "-p", "hi", "-m", "a.gguf", "--demo")
    assert r.exit_code == 2 and "not -m and --demo" in one_error_line(r)


@pytest.mark.parametrize("command", ["run", "chat", "info"])
def test_unknown_model_path_exits_3(command, tmp_path):
    missing = str(tmp_path / "nope.gguf")
    r = invoke(command, "-m", missing, *(["-p", "hi"] if command == "run" else []))
    assert r.exit_code == 3
    line = one_error_line(r)
    assert "model file not found" in line and "nope.gguf" in line


def test_model_path_that_is_a_directory_exits_3(tmp_path):
    r = invoke("run", "-p", "hi", "-m", str(tmp_path))
    assert r.exit_code == 3 and "is a directory" in one_error_line(r)


def test_missing_draft_sidecar_exits_3(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    r = invoke("run", "-p", "hi", "-m", str(model), "-md", str(tmp_path / "mtp-missing.gguf"))
    assert r.exit_code == 3 and "draft model file not found" in one_error_line(r)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--temp", "-1"], "temperature must be within"),
        (["--top-p", "0"], "top-p"),
        (["--min-p", "1.5"], "min-p"),
        (["--repeat-penalty", "0"], "repeat penalty"),
        (["-n", "-2"], "n-predict"),
        (["--seed", "-5"], "--seed"),
        (["--spec-draft-n-max", "0"], "draft length"),
        (["--spec-draft-n-max", "99"], "draft length"),
        (["--spec-draft-n-max", "auto:0"], "draft length"),
        (["--spec-draft-n-max", "fast"], "auto, auto:N or N"),
        (["--spec-draft-n-max", "auto3"], "auto, auto:N or N"),
        (["--draft-p-min", "2"], "p-min"),
        (["-c", "-1"], "context size"),
        (["-t", "0"], "threads"),
        (["-ngl", "-3"], "GPU layers"),
        (["--no-mtp", "--spec-type", "draft-mtp"], "--no-mtp contradicts --spec-type draft-mtp"),
        (["--no-mtp", "--require-mtp"], "--require-mtp contradicts --no-mtp"),
        (["--spec-type", "none", "--require-mtp"], "--require-mtp contradicts --spec-type none"),
        (["--chat-template-kwargs", "{enable_thinking: false}"], "not valid JSON"),
        (["--chat-template-kwargs", "[1, 2]"], "must be a JSON object"),
        (["--raw", "-sys", "be nice"], "--raw skips the chat template"),
    ],
)
def test_bad_option_values_fail_before_any_model_is_built(args, needle, tmp_path):
    r = invoke("run", "-p", "hi", "--demo", *args)
    assert r.exit_code == 2, r.output
    assert needle in one_error_line(r)
    assert not (tmp_path / "cache").exists()  # the demo model was not built


def test_prompt_sources_are_exclusive_and_checked(tmp_path):
    r = invoke("run", "--demo", "-p", "a", "-f", "b.txt")
    assert r.exit_code == 2 and "not both" in one_error_line(r)
    r = invoke("run", "--demo", "-f", str(tmp_path / "missing.txt"))
    assert r.exit_code == 2 and "cannot read prompt file" in one_error_line(r)
    r = invoke("run", "--demo", input="   \n")
    assert r.exit_code == 2 and "stdin was empty" in one_error_line(r)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "-n", "abc"], "Invalid value for '-n'"),
        (["run", "--bogus"], "No such option: --bogus"),
        (["run", "--spec-type", "eagle"], "'eagle' is not one of 'draft-mtp', 'none'"),
        (["nope"], "No such command 'nope'"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], captured.err
    assert "--help" in lines[0]


def test_llama_cli_option_names_are_accepted(tmp_path):
    # every option parses; the run stops at the (missing) model, after validation passed
    r = invoke(
        "run", "-p", "hi", "-m", str(tmp_path / "x.gguf"), "-n", "8", "-c", "2048", "-t", "2", "-ngl", "0",
        "--temp", "0", "--top-k", "20", "--top-p", "0.9", "--min-p", "0", "--repeat-penalty", "1.1",
        "--presence-penalty", "1.5", "--seed", "42", "--spec-draft-n-max", "3", "--draft-p-min", "0.5",
        "--spec-type", "draft-mtp", "-sys", "be brief", "--chat-template-kwargs", '{"enable_thinking": false}',
        "--color", "--verbose", "--require-mtp", "-md", str(tmp_path / "x.gguf"),
    )
    assert r.exit_code == 3 and "draft model file not found" in r.stderr


def test_help_documents_exit_codes_and_options():
    for cmd in ([], ["run"], ["chat"], ["info"]):
        r = invoke(*cmd, "--help")
        assert r.exit_code == 0
        assert "Exit codes: 0 ok" in r.stdout and "4 prompt longer than the context" in r.stdout
    r = invoke("run", "--help")
    for name in ("-ngl", "--ctx-size", "--spec-draft-n-max", "--draft-p-min", "--no-mtp", "--spec-type", "--json", "--raw", "-hf", "-md", "--demo"):
        assert name in r.stdout, name
    r = invoke("chat", "--help")
    for name in ("-sys", "--chat-template-kwargs", "--chat-template-file", "/stats", "Ctrl-C"):
        assert name in r.stdout, name


def test_version_and_bare_command(capsys):
    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout.startswith("mtprun ")
    assert main([]) == 0
    assert "run" in capsys.readouterr().out


def test_shell_completion_is_available():
    r = invoke("--show-completion", "bash")
    assert r.exit_code == 0 and "_MTPRUN_COMPLETE" in r.stdout
