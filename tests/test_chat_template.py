"""Chat templates render like Hugging Face's, in a sandbox; reasoning is split from the answer."""

from __future__ import annotations

import pytest

from mtprun.cli._errors import message as cli_message
from mtprun.chat import (
    CHATML_TEMPLATE,
    ChatTemplate,
    Conversation,
    ReasoningSplitter,
    opens_reasoning,
    parse_template_kwargs,
    split_reasoning,
)
from mtprun.errors import ChatTemplateError, InvalidInputError

# A small Qwen3-style ChatML template: optional thinking switch, reasoning dropped from history.
QWEN_LIKE = """
{%- for message in messages %}
{%- if message.role == 'assistant' %}
{%- set content = message.content %}
{%- if '</think>' in content %}{% set content = content.split('</think>')[-1].lstrip('\\n') %}{% endif %}
{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}
{%- else %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{% else %}{{- '<think>\\n' }}{% endif %}
{%- endif %}
"""

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def tmpl(source: str, **kw) -> ChatTemplate:
    return ChatTemplate(source, model="m.gguf", **kw)


# --- rendering ----------------------------------------------------------------------------------


def test_chatml_renders_messages_and_generation_prompt():
    out = tmpl(CHATML_TEMPLATE).render(MSGS)
    assert out == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert not tmpl(CHATML_TEMPLATE).render(MSGS, add_generation_prompt=False).endswith("assistant\n")


def test_enable_thinking_kwarg_switches_the_generation_prompt():
    t = tmpl(QWEN_LIKE)
    thinking = t.generation_prompt(MSGS)
    plain = t.generation_prompt(MSGS, {"enable_thinking": False})
    assert thinking == "<|im_start|>assistant\n<think>\n"
    assert plain == "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert opens_reasoning(thinking) and not opens_reasoning(plain)


def test_hf_globals_and_filters_are_available():
    src = "{{ bos_token }}{{ messages | tojson }}|{{ eos_token }}|{{ strftime_now('%Y') | length }}"
    out = tmpl(src, bos_token="<s>", eos_token="</s>").render([{"role": "user", "content": "é"}])
    assert out == '<s>[{"role": "user", "content": "é"}]|</s>|4'


def test_generation_block_extension_renders_its_body():
    out = tmpl("{% generation %}A{{ 1 + 1 }}{% endgeneration %}").render([])
    assert out == "A2"


def test_raise_exception_reaches_the_user_with_the_model_name():
    t = tmpl("{{ raise_exception('Conversation roles must alternate user/assistant') }}")
    with pytest.raises(ChatTemplateError) as e:
        t.render(MSGS)
    msg = str(e.value)
    assert "m.gguf" in msg and "roles must alternate" in msg and e.value.option == "template_file"
    assert "--chat-template-file" in cli_message(e.value)  # the CLI suggests the override


def test_syntax_error_names_the_model_and_suggests_an_override():
    with pytest.raises(ChatTemplateError) as e:
        tmpl("{% for m in messages %}{{ m.content }")
    assert "m.gguf" in str(e.value) and "does not compile" in str(e.value)
    assert "--chat-template-file" in cli_message(e.value)


@pytest.mark.parametrize(
    "hostile",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.popen('touch PWNED').read() }}",
        "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('touch PWNED') }}",
        "{{ messages.append({'role': 'x'}) }}",
        "{% set d = {} %}{{ d.update({'a': 1}) }}",
        "{{ 'x' * 100000000000 }}",
        "{{ [0] * 100000000000 }}",
        "{{ 2 ** 99999999 }}",
        "{% set n = 99999999 %}{{ 2 ** n }}",
        "{% for i in range(10 ** 12) %}{% endfor %}",
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    ],
)
def test_hostile_templates_fail_cleanly_without_side_effects(hostile, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ChatTemplateError) as e:
        tmpl(hostile).render(MSGS)
    assert "m.gguf" in str(e.value)
    assert not (tmp_path / "PWNED").exists()


def test_private_attributes_are_invisible_to_templates():
    out = tmpl("{{ '{0.__class__}'.format(messages) }}|{{ messages.__class__ }}|{{ raise_exception.__globals__ }}").render(MSGS)
    assert "class" not in out and "builtins" not in out


def test_missing_template_falls_back_to_builtin_chatml():
    t = ChatTemplate.for_model(None, model="m.gguf")
    assert t.is_builtin and t.render(MSGS).endswith("<|im_start|>assistant\n")
    assert not ChatTemplate.for_model(QWEN_LIKE, model="m.gguf").is_builtin


def test_template_file_overrides_the_model_and_errors_name_the_file(tmp_path):
    f = tmp_path / "t.jinja"
    f.write_text("{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}")
    t = ChatTemplate.for_model(QWEN_LIKE, model="m.gguf", override=f)
    assert t.render(MSGS) == "[system]Be brief.[user]Hi"
    f.write_text("{{ nope(")
    with pytest.raises(ChatTemplateError, match="t.jinja"):
        ChatTemplate.for_model(QWEN_LIKE, model="m.gguf", override=f)
    with pytest.raises(InvalidInputError, match="cannot read chat template file"):
        ChatTemplate.for_model(None, model="m.gguf", override=tmp_path / "missing.jinja")


def test_template_kwargs_are_a_json_object():
    assert parse_template_kwargs('{"enable_thinking": false}') == {"enable_thinking": False}
    assert parse_template_kwargs(None) == {}
    for bad in ("{enable_thinking: false}", "[1]", '"x"'):
        with pytest.raises(InvalidInputError, match="template_kwargs") as e:
            parse_template_kwargs(bad)
        assert cli_message(e.value).startswith("--chat-template-kwargs ")
    with pytest.raises(InvalidInputError, match="messages"):
        parse_template_kwargs('{"messages": []}')


# --- reasoning splitter -------------------------------------------------------------------------


def _run(pieces, **kw):
    sp = ReasoningSplitter(**kw)
    segs = []
    for p in pieces:
        segs += sp.feed(*p) if isinstance(p, tuple) else sp.feed(p)
    return segs + sp.flush()


def _kinds(segs):
    """Merge adjacent segments of the same kind: [(kind, text)]."""
    out: list[list[str]] = []
    for s in segs:
        if out and out[-1][0] == s.kind:
            out[-1][1] += s.text
        else:
            out.append([s.kind, s.text])
    return [tuple(x) for x in out]


REPLY = "\n<think>\nLet me see: 2 < 3.</think>\n\nYes, <think> is a tag."


def test_reasoning_and_answer_are_split_at_every_piece_boundary():
    expected = [("answer", "\n"), ("open", "<think>"), ("reasoning", "\nLet me see: 2 < 3."), ("close", "</think>"), ("answer", "\n\nYes, <think> is a tag.")]
    for i in range(len(REPLY) + 1):
        for j in range(i, len(REPLY) + 1):
            assert _kinds(_run([REPLY[:i], REPLY[i:j], REPLY[j:]])) == expected, (i, j)
    # one character at a time too
    assert _kinds(_run(list(REPLY))) == expected


def test_reply_may_start_inside_reasoning_opened_by_the_prompt():
    segs = _kinds(_run(["I think", " so</th", "ink>\n\nDone"], in_reasoning=True))
    assert segs == [("reasoning", "I think so"), ("close", "</think>"), ("answer", "\n\nDone")]


def test_text_without_tags_is_all_answer_and_a_dangling_partial_tag_is_kept():
    assert _kinds(_run(["Hello", " <thi"])) == [("answer", "Hello <thi")]
    assert _kinds(_run(["  <thi"])) == [("answer", "  <thi")]
    assert _kinds(_run(["<think>abc </thi"])) == [("open", "<think>"), ("reasoning", "abc </thi")]


def test_draft_flags_follow_the_characters_they_came_with():
    segs = _run([("<thi", True), ("nk>ab", False), ("cd</", True), ("think>", False), ("ok", True)])
    assert [(s.kind, s.text, s.from_draft) for s in segs] == [
        ("open", "<think>", False),
        ("reasoning", "ab", False), ("reasoning", "cd", True),
        ("close", "</think>", False),
        ("answer", "ok", True),
    ]


def test_split_reasoning_of_a_whole_reply():
    assert split_reasoning("<think>hmm</think>Answer") == ("hmm", "Answer")
    assert split_reasoning("hmm</think>Answer", in_reasoning=True) == ("hmm", "Answer")
    assert split_reasoning("Answer") == ("", "Answer")


# --- conversation -------------------------------------------------------------------------------


class CharTokenizer:
    """One token per character (BOS = 1), recording what it was asked to tokenize."""

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, text: str, add_special: bool) -> list[int]:
        self.calls.append(text)
        return ([1] if add_special else []) + [ord(c) for c in text]


def test_second_turn_keeps_the_exact_earlier_tokens_and_tokenizes_only_the_new_text():
    tok = CharTokenizer()
    conv = Conversation(tmpl(CHATML_TEMPLATE), tok, system="Be brief.")
    t1 = conv.prompt("Hi")
    assert t1.tokens[0] == 1 and t1.n_new == len(t1.tokens)
    reply_ids = [50001, 50002]  # the ids the engine generated (not what retokenizing gives)
    conv.add_reply("Hello!", reply_ids)
    t2 = conv.prompt("Bye")
    assert t2.tokens[: len(t1.tokens) + 2] == t1.tokens + reply_ids
    assert tok.calls[-1] == "<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    assert t2.n_new == len(tok.calls[-1])
    assert [m["role"] for m in conv.messages] == ["system", "user", "assistant", "user"]


def test_template_that_rewrites_history_still_extends_the_exact_earlier_tokens():
    # QWEN_LIKE trims replies and drops earlier reasoning when it renders a whole conversation;
    # the reply's token ids are kept anyway and only what follows the reply is appended
    tok = CharTokenizer()
    conv = Conversation(tmpl(QWEN_LIKE), tok)
    t1 = conv.prompt("Hi")
    assert t1.starts_in_reasoning
    reply = [9] * 5
    conv.add_reply("hmm</think>\n\n Hello ", reply)
    t2 = conv.prompt("Again")
    assert t2.tokens[: len(t1.tokens) + 5] == t1.tokens + reply
    assert tok.calls[-1] == "<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n<think>\n"
    assert t2.n_new == len(tok.calls[-1]) and t2.starts_in_reasoning


def test_template_that_does_not_show_replies_is_rendered_again():
    tok = CharTokenizer()
    conv = Conversation(tmpl("{% for m in messages if m.role == 'user' %}[{{ m.content }}]{% endfor %}"), tok)
    conv.prompt("a")
    conv.add_reply("b", [77])
    t2 = conv.prompt("c")
    assert t2.text == "[a][c]" and t2.tokens == [1] + [ord(c) for c in "[a][c]"]
    assert t2.n_new == 3  # "[a]" (and BOS) still match what the engine has


def test_bos_is_not_added_twice_when_the_template_writes_it():
    tok = CharTokenizer()
    conv = Conversation(tmpl("{{ bos_token }}{{ messages[-1].content }}", bos_token="<s>"), tok)
    assert conv.prompt("x").tokens == [ord(c) for c in "<s>x"]


def test_clear_and_undo():
    tok = CharTokenizer()
    conv = Conversation(tmpl(CHATML_TEMPLATE), tok, system="S")
    conv.prompt("a")
    conv.add_reply("b", [7])
    before = (list(conv.messages), conv.n_tokens)
    conv.prompt("too long")
    conv.undo_prompt()
    assert (conv.messages, conv.n_tokens) == before
    conv.clear()
    assert conv.messages == [{"role": "system", "content": "S"}] and conv.n_tokens == 0


GEMMA_LIKE = (
    "{%- for m in messages -%}{{- '<|turn>' + m.role + '\\n' + m.content + '<turn|>\\n' -}}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|turn>model\\n' -}}"
    "{%- if not enable_thinking -%}{{- '<|channel>thought\\n<channel|>' -}}{%- endif -%}{%- endif -%}"
)


def test_gemma4_thought_channel_is_recognised_as_reasoning():
    t = tmpl(GEMMA_LIKE)
    assert t.reasoning_tags == ("<|channel>thought", "<channel|>")
    assert tmpl(QWEN_LIKE).reasoning_tags == ("<think>", "</think>")
    assert not opens_reasoning(t.generation_prompt(MSGS), *t.reasoning_tags)  # thinking off: empty, closed block
    reply = "<|channel>thought\nPlan it.<channel|>Done."
    assert split_reasoning(reply, tags=t.reasoning_tags) == ("\nPlan it.", "Done.")
    assert _kinds(_run(list(reply), open_tag="<|channel>thought", close_tag="<channel|>")) == [
        ("open", "<|channel>thought"), ("reasoning", "\nPlan it."), ("close", "<channel|>"), ("answer", "Done."),
    ]
