"""How replies and statistics look: drafts distinguishable, reasoning dimmed, model text literal."""

from __future__ import annotations

import io
import re

from mtprun.cli.ui import Output, format_stats_line, stats_rows
from mtprun.events import GenerationStats, PolicyEstimates

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def render(pieces, *, color=None, starts_in_reasoning=False):
    out, err = io.StringIO(), io.StringIO()
    o = Output(color=color, stdout=out, stderr=err)
    r = o.reply(starts_in_reasoning=starts_in_reasoning)
    for p in pieces:
        r.piece(*p) if isinstance(p, tuple) else r.piece(p)
    r.end()
    return out.getvalue(), err.getvalue()


def styled_runs(s: str) -> list[tuple[str, str]]:
    """[(active SGR codes, text)] of an ANSI string."""
    runs, codes = [], ""
    for part in re.split(r"(\x1b\[[0-9;]*m)", s):
        if ANSI.fullmatch(part or "x"):
            codes = "" if part in ("\x1b[0m", "\x1b[m") else codes + part
        elif part:
            runs.append((codes, part))
    return runs


def style_of(s: str, needle: str) -> str:
    for codes, text in styled_runs(s):
        if needle in text:
            return codes
    raise AssertionError(f"{needle!r} not in {s!r}")


def test_accepted_draft_text_is_coloured_differently_from_target_text():
    out, err = render([("Hello", False), (" world", True), ("!", False)], color=True)
    assert ANSI.sub("", out) == "Hello world!\n"
    assert style_of(out, " world") != style_of(out, "Hello")
    assert "36" in style_of(out, " world")  # cyan, as llama.cpp's speculative example
    assert err == ""


def test_reasoning_is_dimmed_framed_and_separated_from_the_answer():
    out, _ = render(["<think>", "Let me", (" think.", True), "</think>", "\n\nThe answer."], color=True)
    plain = ANSI.sub("", out)
    assert plain == "[Start thinking]\nLet me think.\n[End thinking]\n\nThe answer.\n"
    assert "\x1b[2" in style_of(out, "Let me")  # dim
    assert "\x1b[2" in style_of(out, " think.") and "36" in style_of(out, " think.")
    assert "\x1b[2" not in style_of(out, "The answer.")


def test_reply_that_starts_inside_reasoning_is_framed_from_the_start():
    out, _ = render(["hmm", "</think>", "ok"], color=True, starts_in_reasoning=True)
    assert ANSI.sub("", out) == "[Start thinking]\nhmm\n[End thinking]\n\nok\n"


def test_unfinished_reasoning_is_closed_on_screen():
    out, _ = render(["<think>", "still going"], color=True)
    assert ANSI.sub("", out) == "[Start thinking]\nstill going\n[End thinking]\n"


def test_model_markup_and_control_sequences_are_shown_literally():
    hostile = "[bold red]x[/bold red] :smile: \x1b[31mred\x1b]0;title\x07 \r[link=file:///etc]y[/link]"
    for color in (True, None):
        out, _ = render([hostile[:9], hostile[9:]], color=color)
        assert "[bold red]x[/bold red] :smile:" in out
        assert "[link=file:///etc]y[/link]" in out
        assert "\x1b[31mred" not in out and "\\x1b[31mred" in out
        assert "\x07" not in out and "\r" not in out and "\\x1b]0;title\\x07" in out


def test_piped_output_is_the_exact_text_with_tags_and_tabs():
    text = "<think>a\tb</think>\n\nAnswer\twith tab"
    out, _ = render([text[:3], text[3:12], text[12:]])
    assert out == text + "\n"
    assert "\x1b" not in out


def test_piped_output_keeps_a_final_newline_and_writes_nothing_for_an_empty_reply():
    assert render(["line\n"])[0] == "line\n"
    assert render([])[0] == ""


def test_no_color_on_a_terminal_writes_no_escape_sequences():
    out, err = io.StringIO(), io.StringIO()
    o = Output(color=False, stdout=out, stderr=err, terminal=True)  # a terminal, but --no-color
    assert o.interactive
    r = o.reply()
    r.piece("<think>x</think>y", True)
    r.end()
    o.warn("careful")
    assert "\x1b" not in out.getvalue() + err.getvalue()


def stats(**kw):
    base = dict(
        n_prompt_tokens=20, n_prompt_reused=8, prompt_seconds=0.5, n_generated=30, generation_seconds=2.0,
        n_drafted=24, n_accepted=18, drafted_by_position=(12, 12), accepted_by_position=(11, 7),
        n_target_passes=12, draft_seconds=0.4, verify_seconds=1.2, sample_seconds=0.1, mtp=True,
    )
    base.update(kw)
    return GenerationStats(**base)


def test_stats_line_shows_tokens_speed_acceptance_tokens_per_pass_and_positions():
    line = format_stats_line(stats())
    assert "30 tokens, 15.0 tok/s" in line
    assert "18/24 drafts accepted (75%)" in line
    assert "2.50 tok/pass" in line
    assert "by position 92% 58%" in line
    assert "prompt 12 new tokens, 24.0 tok/s" in line
    assert "stopped" not in line
    assert "stopped: token limit" in format_stats_line(stats(), "length")


def test_stats_line_leaves_out_draft_positions_never_drafted():
    # auto with a ceiling of 6 that drafted at most 2: positions 3-6 were never tried, not rejected
    line = format_stats_line(stats(adaptive=True, n_max=6, steps_by_draft_length=(4, 6, 6, 0, 0, 0, 0),
                                   drafted_by_position=(12, 6, 0, 0, 0, 0), accepted_by_position=(11, 3, 0, 0, 0, 0)))
    assert line.split("by position ")[1].split(" |")[0] == "92% 50%"
    none = format_stats_line(stats(adaptive=True, n_max=6, n_drafted=0, n_accepted=0, steps_by_draft_length=(12, 0, 0, 0, 0, 0, 0),
                                   drafted_by_position=(0,) * 6, accepted_by_position=(0,) * 6))
    assert "by position - |" in none


def test_stats_line_says_auto_and_the_mean_draft_length():
    line = format_stats_line(stats(adaptive=True, n_max=6, steps_by_draft_length=(4, 2, 0, 6, 0, 0, 0)))
    assert "(75%), auto, mean draft 1.7, " in line  # (2*1 + 6*3) / 12 steps
    assert "(75%), draft 2, " in format_stats_line(stats(adaptive=False, n_max=2, steps_by_draft_length=(0, 0, 12)))


def test_stats_line_without_mtp_says_so():
    line = format_stats_line(stats(mtp=False, n_drafted=0, n_accepted=0, drafted_by_position=(), accepted_by_position=()))
    assert "MTP off" in line and "drafts" not in line


def test_stats_table_lists_every_statistic():
    rows = dict(stats_rows(stats(), "eos"))
    assert rows["prompt tokens"] == "20 (8 reused from the cache)"
    assert rows["drafted / accepted"] == "24 / 18 (75%)"
    assert rows["target passes"] == "12 (2.50 tokens per pass)"
    assert rows["  draft position 1"] == "11/12 accepted (92%)"
    assert rows["  draft position 2"] == "7/12 accepted (58%)"
    assert rows["verify time"] == "1.200 s (60%)"
    assert rows["other time"] == "0.300 s (15%)"
    assert rows["stop reason"] == "eos"
    rows = dict(stats_rows(stats(adaptive=True, n_max=2, steps_by_draft_length=(2, 4, 6),
                                 policy=PolicyEstimates((0.9, 0.6), (0.010, 0.012, 0.0145), 0.002)), "eos"))
    assert rows["MTP speculation"] == "on, draft length auto:2"
    assert rows["steps by draft length"] == "0:2 1:4 2:6 (mean 1.33)"
    assert rows["policy: acceptance"] == "90% 60%"
    assert rows["policy: target ms"] == "1:10.00 2:12.00 3:14.50"
    assert rows["policy: head ms"] == "2.00 per draft token"
    err = io.StringIO()
    Output(color=False, stdout=io.StringIO(), stderr=err).stats_table(stats(), "eos")
    assert "draft position 2" in err.getvalue() and "7/12 accepted (58%)" in err.getvalue()
