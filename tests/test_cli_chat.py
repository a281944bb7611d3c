"""`mtprun chat` with stdin that is not a terminal: scripted turns, commands, and the failures."""

from __future__ import annotations

import os
import subprocess
import sys

from _cli_models import isolated_home, models  # noqa: F401  (fixtures)

GREEDY = ["--temp", "0"]


def chat(args, *, input: str | None = None, close_stdin: bool = False, timeout: float = 120):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    kw = {}
    if close_stdin:
        kw["stdin"] = subprocess.DEVNULL
        kw["preexec_fn"] = lambda: os.close(0)
    elif input is None:
        kw["stdin"] = subprocess.DEVNULL
    else:
        kw["input"] = input
    return subprocess.run([sys.executable, "-m", "mtprun", "chat", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, **kw)


def test_scripted_chat_replies_to_each_message_on_stdout(models):
    done = chat(["-m", str(models.demo.model_path), "-n", "12", *GREEDY], input="Hello\n/stats\nAgain\n/clear\nOnce more\n")
    assert done.returncode == 0, done.stderr
    replies = done.stdout.splitlines()
    assert len(replies) == 3 and replies[0] == replies[1] == replies[2]
    assert replies[0] == models.demo.cycle_text[: len(replies[0])]
    assert len([line for line in done.stderr.splitlines() if line.startswith("12 tokens, ")]) == 3
    assert "drafted / accepted" in done.stderr and "conversation cleared" in done.stderr


def test_chat_gives_the_same_greedy_text_with_and_without_mtp(models):
    script = "Hello\nTell me more\n"
    base = ["-m", str(models.demo.model_path), "-n", "40", *GREEDY]
    mtp = chat(base, input=script)
    plain = chat([*base, "--no-mtp"], input=script)
    assert mtp.returncode == plain.returncode == 0
    assert mtp.stdout == plain.stdout and len(mtp.stdout.splitlines()) == 2
    assert "drafts accepted" in mtp.stderr and "MTP off" in plain.stderr


def test_closed_or_empty_stdin_is_one_clear_error(models):
    for kw in ({"close_stdin": True}, {}):
        done = chat(["-m", str(models.demo.model_path)], **kw)
        assert done.returncode == 2, (kw, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and "stdin" in lines[-1] and "Traceback" not in done.stderr
        assert done.stdout == ""


def test_a_message_that_overflows_the_context_is_reported_and_the_chat_goes_on(models):
    script = "Hi\n" + "word " * 300 + "\nHi again\n"
    done = chat(["-m", str(models.demo.model_path), "-c", "128", "-n", "8", *GREEDY], input=script)
    assert done.returncode == 0, done.stderr
    assert "error: " in done.stderr and "context" in done.stderr and "/clear" in done.stderr
    assert len(done.stdout.splitlines()) == 2  # the first and the last message were answered


def test_broken_template_fails_at_start_naming_the_model(models, tmp_path):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}{{ m.content.__class__.__mro__[1].__subclasses__() }}{% endfor %}")
    done = chat(["-m", str(models.demo.model_path), "--chat-template-file", str(bad)], input="Hello\n")
    assert done.returncode == 3 and done.stdout == ""
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and models.demo.model_path.name in line and "bad.jinja" in line


def test_unknown_command_is_reported_and_exit_ends_the_chat(models):
    done = chat(["-m", str(models.demo.model_path), "-n", "4"], input="/frobnicate\n/exit\nnot read\n")
    assert done.returncode == 0 and done.stdout == ""
    assert "unknown command /frobnicate" in done.stderr
