"""ChatSession, the library's chat turn: cached tokens across turns, the reasoning split, and a
conversation that a failed turn leaves as it was. On the synthetic demo models (an oracle that
recites a fixed passage; its ChatML template opens ``<think>`` unless ``enable_thinking`` is false)."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from mtprun import ChatReply, ChatSession, ChatTemplate, Engine, GenerationConfig, ModelConfig, ReplyStart, Result, Segment, Step
from mtprun.config import SamplingConfig, SpecConfig
from mtprun.errors import ChatTemplateError, ContextOverflowError, InvalidInputError
from mtprun.synth import demo_spec

NO_THINKING = {"enable_thinking": False}


def greedy(n: int) -> GenerationConfig:
    return GenerationConfig(sampling=SamplingConfig(temperature=0.0), spec=SpecConfig(n_max=3, adaptive=False), max_tokens=n)


@pytest.fixture(scope="module")
def demo(synth_model):
    return synth_model(**asdict(demo_spec()))


@pytest.fixture(scope="module")
def endless(synth_model):
    return synth_model(**{**asdict(demo_spec()), "end_with_eos": False})


def open_engine(model, n_ctx: int = 1024) -> Engine:
    return Engine(ModelConfig(path=model.model_path, n_ctx=n_ctx, n_threads=1, flash_attn=False))


def passage(model, n_chars: int) -> str:
    return (model.cycle_text * (n_chars // len(model.cycle_text) + 2))[:n_chars]


def kinds(segments) -> list[str]:
    """Segment kinds with runs of one kind merged."""
    out: list[str] = []
    for s in segments:
        if not out or out[-1] != s.kind:
            out.append(s.kind)
    return out


def test_each_turn_hands_the_engine_the_earlier_tokens_and_processes_only_the_new_ones(endless):
    with open_engine(endless) as eng:
        chat = ChatSession(eng, system="Be brief.", config=greedy(12), template_kwargs=NO_THINKING)
        assert chat.template.origin == "model" and chat.messages == [{"role": "system", "content": "Be brief."}]
        first_prompt = chat.prompt_tokens("Hello")
        assert chat.n_tokens == 0  # asking for the tokens changes nothing

        events = list(chat.reply("Hello"))
        start, result = events[0], events[-1]
        assert isinstance(start, ReplyStart) and isinstance(result, Result)
        assert start.n_prompt_tokens == start.n_new_tokens == len(first_prompt)
        assert not start.starts_in_reasoning and start.reasoning_tags == ("<think>", "</think>")
        assert result.stop_reason == "length" and len(result.tokens) == 12
        assert result.text == passage(endless, len(result.text))
        assert result.stats.n_prompt_tokens == len(first_prompt) and result.stats.n_prompt_reused == 0
        assert chat.last == ChatReply(result, "", result.text)
        assert chat.n_tokens == len(first_prompt) + 12
        assert [m["role"] for m in chat.messages] == ["system", "user", "assistant"]
        assert chat.messages[-1]["content"] == result.text

        # turn 2: the exact tokens of turn 1 (prompt and reply), then only the new message's
        before = [*first_prompt, *result.tokens]
        second_prompt = chat.prompt_tokens("Again")
        assert second_prompt[: len(before)] == before
        reply = chat.ask("Again")
        stats = reply.stats
        n_new = len(second_prompt) - len(before)
        assert 0 < n_new < len(first_prompt) and stats.n_prompt_tokens == len(second_prompt)
        # everything before is reused from the cache (llama.cpp may evaluate the last known token again)
        assert len(before) - 1 <= stats.n_prompt_reused <= len(before)
        assert reply.text == result.text  # the oracle recites its passage again
        assert chat.n_tokens == len(second_prompt) + 12 and len(chat.messages) == 5

        # clear: the system prompt stays, the last reply is still there for /stats
        chat.clear()
        assert chat.messages == [{"role": "system", "content": "Be brief."}] and chat.n_tokens == 0
        assert chat.last is reply
        assert chat.prompt_tokens("Hello") == first_prompt


def test_reply_is_split_into_reasoning_and_answer_segments(demo):
    with open_engine(demo) as eng:
        # the model's template opens <think> in the generation prompt; the oracle never closes it
        chat = ChatSession(eng, config=greedy(16))
        events = list(chat.reply("Hi"))
        assert events[0].starts_in_reasoning
        segments = [e for e in events if isinstance(e, Segment)]
        assert kinds(segments) == ["reasoning"]
        assert "".join(s.text for s in segments) == events[-1].text
        assert chat.last.reasoning == chat.last.text and chat.last.answer == ""

        # a template whose reasoning ends with the passage's " foxes": reasoning, the tag, answer
        class Tagged(ChatTemplate):
            reasoning_tags = ("<think>", " foxes")

        template = Tagged(chat.template.source, model="demo", bos_token=eng.info.bos_token, eos_token=eng.info.eos_token)
        chat = ChatSession(eng, config=greedy(30), template=template)
        events = list(chat.reply("Tell me a story"))
        start, result = events[0], events[-1]
        assert start.starts_in_reasoning and start.reasoning_tags == ("<think>", " foxes")
        segments = [e for e in events if isinstance(e, Segment)]
        assert kinds(segments) == ["reasoning", "close", "answer"]
        assert "".join(s.text for s in segments) == result.text
        assert [s.text for s in segments if s.kind == "close"] == [" foxes"]
        head, _, tail = result.text.partition(" foxes")
        assert chat.last.reasoning == head == " Once upon a quiet morning, seven curious"
        assert chat.last.answer == tail and tail.startswith(" wandered")
        # segments carry the draft flags of the characters they came with (accepted MTP drafts)
        pieces = [p for e in events if isinstance(e, Step) for p in e.pieces]
        by_piece = [p.from_draft for p in pieces for _ in p.text]
        by_segment = [None if s.kind == "close" else s.from_draft for s in segments for _ in s.text]
        assert any(by_piece) and not all(by_piece)
        assert [f for f, g in zip(by_piece, by_segment) if g is not None] == [g for g in by_segment if g is not None]
        first_segment = next(i for i, e in enumerate(events) if isinstance(e, Segment))
        assert isinstance(events[first_segment - 1], Step)


def test_a_message_that_overflows_the_context_leaves_the_conversation_as_before(demo):
    with open_engine(demo, n_ctx=128) as eng:
        chat = ChatSession(eng, config=greedy(8), template_kwargs=NO_THINKING)
        chat.ask("Hi")
        messages, n_tokens = chat.messages, chat.n_tokens
        last = chat.last
        with pytest.raises(ContextOverflowError):
            for _ in chat.reply("word " * 300):
                pass
        assert chat.messages == messages and chat.n_tokens == n_tokens and chat.last is last
        # the chat goes on, and the earlier turns are still in the cache
        reply = chat.ask("Hi again")
        assert reply.stop_reason in ("eos", "length") and reply.text
        assert reply.stats.n_prompt_reused >= n_tokens - 1
        assert [m["content"] for m in chat.messages if m["role"] == "user"] == ["Hi", "Hi again"]


def test_a_template_that_fails_on_a_message_leaves_the_conversation_as_before(demo):
    with open_engine(demo) as eng:
        source = ("{% if messages[-1].content == 'boom' %}{{ raise_exception('no booms') }}{% endif %}"
                  + eng.info.chat_template)
        template = ChatTemplate(source, model="demo", bos_token=eng.info.bos_token, eos_token=eng.info.eos_token)
        chat = ChatSession(eng, config=greedy(4), template=template, template_kwargs=NO_THINKING)
        chat.ask("Hi")
        messages, n_tokens = chat.messages, chat.n_tokens
        with pytest.raises(ChatTemplateError, match="no booms"):
            next(chat.reply("boom"))
        assert chat.messages == messages and chat.n_tokens == n_tokens
        assert chat.ask("Hi").stop_reason == "length"


def test_a_broken_template_fails_when_the_session_is_made_naming_the_model(demo, tmp_path):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{{ messages[0].content.__class__.__mro__ }}")
    with open_engine(demo) as eng:
        with pytest.raises(ChatTemplateError, match=r"bad\.jinja.*'my model'"):
            ChatSession(eng, template_file=bad, model="my model")
        with pytest.raises(InvalidInputError):
            ChatSession(eng, template=ChatTemplate("x", model="m"), template_file=bad)


def test_a_reply_cut_short_is_kept_and_the_engine_stays_usable(endless):
    with open_engine(endless) as eng:
        chat = ChatSession(eng, config=greedy(500), template_kwargs=NO_THINKING)
        # cancel(): the engine stops at the next step, the reply ends with a result
        events = []
        for event in chat.reply("Tell me a story"):
            events.append(event)
            if isinstance(event, Step):
                chat.cancel()
        result = events[-1]
        assert result.stop_reason == "cancelled" and 0 < len(result.tokens) < 500
        assert chat.messages[-1] == {"role": "assistant", "content": result.text}

        # the consumer stops reading: what it has received is kept, the next turn works
        n_before = chat.n_tokens
        stream = chat.reply("Go on")
        got = []
        for event in stream:
            if isinstance(event, Step):
                got.extend(event.pieces)
                break
        with pytest.raises(InvalidInputError, match="already replying"):
            next(chat.reply("too soon"))
        stream.close()
        assert chat.messages[-1] == {"role": "assistant", "content": "".join(p.text for p in got)}
        assert chat.messages[-2] == {"role": "user", "content": "Go on"}
        assert chat.n_tokens > n_before + len(got)
        assert chat.ask("And then?").stop_reason == "length"
