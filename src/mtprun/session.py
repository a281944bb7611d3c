"""A chat with an engine: one :class:`ChatSession` per conversation, one :meth:`~ChatSession.reply`
per turn. No Rich, no printing: front ends (``mtprun chat``/``run``, a server, a notebook) render
the events it yields.

A turn renders the conversation through the model's chat template (sandboxed, with budgets),
hands the engine the conversation's tokens -- the earlier turns' exact tokens, so the engine's
cache covers all but the new ones -- streams the engine's events with the reply split into
reasoning and answer :class:`~mtprun.events.Segment` events, and records the reply for the next turn::

    from mtprun import ChatSession, Engine, GenerationConfig, ModelConfig

    with Engine(ModelConfig(path="model.gguf")) as engine:
        chat = ChatSession(engine, system="Be brief.", config=GenerationConfig(max_tokens=200))
        for event in chat.reply("Hello"):
            ...  # ReplyStart, then Step and Segment events, then the Result
        print(chat.ask("And then?").answer)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Union

from .chat import ChatTemplate, Conversation, ReasoningSplitter, split_reasoning
from .config import GenerationConfig
from .errors import InvalidInputError
from .events import ChatReply, ReplyStart, Result, Segment, Step

ReplyEvent = Union[ReplyStart, Step, Segment, Result]
"""What :meth:`ChatSession.reply` yields."""


class ChatSession:
    """A multi-turn chat with one engine.

    ``engine``: an :class:`~mtprun.engine.Engine` (anything with its ``info``, ``tokenize``,
    ``generate`` and ``cancel``). ``system``: the system prompt (kept by :meth:`clear`).
    ``config``: the generation settings of each reply (``reply(config=...)`` overrides one).
    ``template``: the chat template; by default ``template_file`` (a Jinja file) if given, else the
    model's own, else ChatML (then ``template.is_builtin``). ``template_kwargs``: extra template
    variables such as ``{"enable_thinking": False}``. ``model``: how errors name the model (default:
    the model file's name).

    The template is tried once here, so a broken one raises
    :class:`~mtprun.errors.ChatTemplateError` now rather than at the first message.
    """

    def __init__(
        self,
        engine: Any,
        *,
        system: str | None = None,
        config: GenerationConfig | None = None,
        template: ChatTemplate | None = None,
        template_file: str | os.PathLike[str] | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
        model: str | None = None,
    ) -> None:
        if template is not None and template_file is not None:
            raise InvalidInputError("give a chat template or a template file, not both")
        info = engine.info
        if template is None:
            if model is None:
                path = getattr(getattr(engine, "config", None), "path", None)
                model = Path(path).name if path is not None else "the model"
            template = ChatTemplate.for_model(
                info.chat_template, model=model, bos_token=info.bos_token, eos_token=info.eos_token,
                override=Path(template_file) if template_file is not None else None,
            )
        self.engine = engine
        self.config = config or GenerationConfig()
        self.conversation = Conversation(
            template, lambda text, add: engine.tokenize(text, add_special=add, parse_special=True),
            system=system, template_kwargs=template_kwargs, add_bos=info.add_bos,
        )
        self.last: ChatReply | None = None  # the last whole reply (kept by clear())
        self._replying = False
        template.render([*self.conversation.messages, {"role": "user", "content": "hello"}], kwargs=self.conversation.template_kwargs)

    @property
    def template(self) -> ChatTemplate:
        return self.conversation.template

    @property
    def messages(self) -> list[dict[str, str]]:
        """The conversation so far (a copy): the system prompt, user messages and replies."""
        return [dict(m) for m in self.conversation.messages]

    @property
    def n_tokens(self) -> int:
        """Tokens the conversation holds (prompts and replies), of the engine's context."""
        return self.conversation.n_tokens

    def prompt_tokens(self, text: str) -> list[int]:
        """The tokens the engine would be handed for the next message ``text`` (the whole
        conversation with it, ending with the generation prompt); the conversation stays as it is."""
        if self._replying:
            raise InvalidInputError("the session is replying: finish or close the reply first")
        turn = self.conversation.prompt(text)
        self.conversation.undo_prompt()
        return list(turn.tokens)

    def clear(self) -> None:
        """Forget the conversation; the system prompt stays (and :attr:`last` too)."""
        if self._replying:
            raise InvalidInputError("the session is replying: finish or close the reply first")
        self.conversation.clear()

    def cancel(self) -> None:
        """Stop the reply being generated at the next step (safe from signal handlers and other
        threads); it ends with stop reason ``"cancelled"`` and the partial reply is kept."""
        self.engine.cancel()

    def reply(self, text: str, config: GenerationConfig | None = None) -> Iterator[ReplyEvent]:
        """Add the user message ``text`` and generate the reply (a generator: nothing happens
        until it is iterated).

        Yields one :class:`~mtprun.events.ReplyStart`, then each engine :class:`~mtprun.events.Step`
        followed by the :class:`~mtprun.events.Segment` events its text completes, and finally the
        engine's :class:`~mtprun.events.Result` (also recorded as :attr:`last`).

        The reply joins the conversation however it ends: by end of generation, the token limit, a
        full context, :meth:`cancel`, or the consumer closing the iterator or being interrupted
        (then the part generated so far). When the turn fails -- the template raises
        (ChatTemplateError), the conversation does not fit the context (ContextOverflowError),
        the engine fails -- the conversation is as it was before the turn.
        """
        if self._replying:
            raise InvalidInputError("the session is already replying")
        self._replying = True
        try:
            yield from self._reply(text, config or self.config)
        finally:
            self._replying = False

    def ask(self, text: str, config: GenerationConfig | None = None) -> ChatReply:
        """:meth:`reply` without streaming: the whole reply."""
        for _ in self.reply(text, config):
            pass
        assert self.last is not None  # set by every reply that ends without an exception
        return self.last

    def _reply(self, text: str, config: GenerationConfig) -> Iterator[ReplyEvent]:
        conv = self.conversation
        turn = conv.prompt(text)  # ChatTemplateError: nothing has changed
        tags = conv.template.reasoning_tags
        splitter = ReasoningSplitter(in_reasoning=turn.starts_in_reasoning, open_tag=tags[0], close_tag=tags[1])
        pieces: list[tuple[int, str]] = []  # (token, text) so far: a reply cut short keeps them
        result: Result | None = None
        failed = False
        events = self.engine.generate(turn.tokens, config)
        try:
            yield ReplyStart(len(turn.tokens), turn.n_new, turn.starts_in_reasoning, tags)
            for event in events:
                if isinstance(event, Step):
                    pieces.extend((p.token, p.text) for p in event.pieces)
                    yield event
                    for piece in event.pieces:
                        yield from splitter.feed(piece.text, piece.from_draft)
                elif isinstance(event, Result):
                    result = event
            if result is None:  # the engine's contract is to end with a Result
                raise RuntimeError("the engine ended a generation without a result")
            yield from splitter.flush()
            self._record(result, turn.starts_in_reasoning, tags)
            yield result
        except Exception:
            failed = True
            raise
        finally:
            events.close()  # ends the native generation when the consumer stopped early
            if conv.messages and conv.messages[-1]["role"] == "user":  # no reply recorded yet
                if result is not None:
                    self._record(result, turn.starts_in_reasoning, tags)
                elif failed or not pieces:
                    conv.undo_prompt()
                else:  # closed or interrupted part-way: keep what was generated, as cancel() does
                    conv.add_reply("".join(t for _, t in pieces), [tok for tok, _ in pieces])

    def _record(self, result: Result, starts_in_reasoning: bool, tags: tuple[str, str]) -> None:
        if self.conversation.messages and self.conversation.messages[-1]["role"] == "user":
            self.conversation.add_reply(result.text, result.tokens)
        reasoning, answer = split_reasoning(result.text, in_reasoning=starts_in_reasoning, tags=tags)
        self.last = ChatReply(result, reasoning, answer)
