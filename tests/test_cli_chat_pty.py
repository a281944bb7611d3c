"""`mtprun chat` in a real pseudo-terminal: turns, /stats, Ctrl-C during a reply and at the prompt, Ctrl-D."""

from __future__ import annotations

import io
import os
import re
import sys

import pytest

from _cli_models import isolated_home, models  # noqa: F401  (fixtures)

pexpect = pytest.importorskip("pexpect")

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
STATS_LINE = re.compile(r"(\d+) tokens, [\d.]+ tok/s \| MTP (\d+)/(\d+) drafts accepted .*?\| (prompt (\d+) new tokens|prompt cached)(.*?)\r?\n")
REUSED = re.compile(r"prompt tokens\s+(\d+) \((\d+) reused from the cache\)")
CONVERSATION = re.compile(r"conversation: (\d+) of (\d+) context tokens")


def spawn(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TERM": "xterm", "COLUMNS": "200"}
    env.pop("NO_COLOR", None)
    child = pexpect.spawn(sys.executable, ["-m", "mtprun", "chat", *args], env=env, encoding="utf-8",
                          timeout=60, dimensions=(50, 200), cwd=str(tmp_path))
    child.logfile_read = io.StringIO()  # the whole session, for failure messages
    return child


def log(child) -> str:
    return ANSI.sub("", child.logfile_read.getvalue())


def test_chat_turns_stats_ctrl_c_and_ctrl_d_in_a_terminal(models, tmp_path):
    # 1500-token replies: long enough that Ctrl-C surely lands inside the first one
    child = spawn(["-m", str(models.endless.model_path), "--temp", "0", "-n", "1500", "-t", "1",
                   "--chat-template-kwargs", '{"enable_thinking": false}'], tmp_path)
    try:
        child.expect(r"mtprun chat .* MTP on, drafting 0 to 6 tokens per step \(auto\)")
        child.expect_exact("> ")

        # turn 1, interrupted by Ctrl-C once the reply is streaming
        child.sendline("Tell me a story")
        child.expect("Once")
        child.sendintr()
        child.expect(STATS_LINE)
        first = child.match
        assert "stopped: interrupted" in first.group(6), log(child)
        assert 0 < int(first.group(1)) < 1500
        child.expect_exact("> ")

        # turn 2, after the interrupted one: runs to -n, reusing the cache
        child.sendline("Go on")
        child.expect(STATS_LINE)
        second = child.match
        assert int(second.group(1)) == 1500 and "token limit" in second.group(6), log(child)
        assert int(second.group(2)) > 0  # MTP drafts were accepted
        child.expect_exact("> ")
        child.sendline("/stats")
        child.expect(CONVERSATION)
        n_conversation = int(child.match.group(1))
        child.expect_exact("> ")
        stats_text = log(child).rsplit("> /stats", 1)[1]
        for row in ("drafted / accepted", "target passes", "draft position 1", "draft position 2", "verify time"):
            assert row in stats_text, stats_text
        prompt_total, reused = map(int, REUSED.search(stats_text).groups())
        assert reused > 0 and prompt_total - reused == int(second.group(5))

        # turn 3: only the new tokens are processed; everything before is reused from the cache
        child.sendline("And then? \\")  # a trailing backslash continues the message
        child.expect_exact(". ")
        child.sendline("Tell me.")
        child.expect(STATS_LINE)
        child.expect_exact("> ")
        child.sendline("/stats")
        child.expect(CONVERSATION)
        child.expect_exact("> ")
        stats_text = log(child).rsplit("> /stats", 1)[1]
        prompt_total, reused = map(int, REUSED.search(stats_text).groups())
        assert n_conversation - 1 <= reused <= n_conversation, stats_text

        # Ctrl-C at the prompt drops the typed line; the next command still works
        child.send("half a message")
        child.expect_exact("half a message")  # echoed: readline has taken the keys (a Ctrl-C racing
        child.sendintr()                       # keys still being read is lost in readline itself)
        child.expect_exact("> ")
        child.sendline("/help")
        child.expect_exact("/clear")
        child.expect_exact("> ")
        assert "unknown command" not in log(child)

        # Ctrl-D exits cleanly
        child.sendeof()
        child.expect(pexpect.EOF)
    except pexpect.TIMEOUT:
        pytest.fail("no expected output; the session was:\n" + log(child))
    finally:
        child.close()
    assert child.exitstatus == 0, log(child)
    assert "Traceback" not in log(child)
