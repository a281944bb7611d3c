"""Running one generation or chat turn for the CLI: stream it to the renderer, Ctrl-C cancels it."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

from ..config import GenerationConfig
from ..events import ChatReply, ReplyStart, Result, Segment, Step
from ..session import ChatSession
from .ui import Output, ReplyStream


@contextmanager
def cancel_on_interrupt(engine) -> Iterator[None]:
    """While active, Ctrl-C (SIGINT) calls ``engine.cancel()`` (an engine or a chat session): the
    reply ends with stop reason "cancelled"."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda signum, frame: engine.cancel())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def generate(engine, tokens: Sequence[int], config: GenerationConfig, reply: ReplyStream | None) -> Result:
    """Generate from ``tokens`` (no chat template), streaming accepted pieces to ``reply`` (if any);
    return the result."""
    result: Result | None = None
    with cancel_on_interrupt(engine):
        try:
            for event in engine.generate(list(tokens), config):
                if isinstance(event, Step):
                    if reply is not None:
                        for piece in event.pieces:
                            reply.piece(piece.text, piece.from_draft)
                elif isinstance(event, Result):
                    result = event
        finally:
            if reply is not None:
                reply.end()
    if result is None:  # the engine's contract is to end with a Result
        raise RuntimeError("the engine ended a generation without a result")
    return result


def open_session(out: Output, engine, label: str, **options) -> ChatSession:
    """A chat session over ``engine`` (``options``: ChatSession's), with a warning when the model
    has no chat template of its own."""
    session = ChatSession(engine, model=label, **options)
    if session.template.is_builtin:
        out.warn(f"{label} has no chat template; using ChatML (give --chat-template-file FILE)")
    return session


def chat_turn(out: Output, session: ChatSession, text: str, *, render: bool = True) -> ChatReply:
    """One turn of ``session``: the reply streamed to stdout (unless ``render`` is False); Ctrl-C
    cancels it once the template has rendered."""
    reply: ReplyStream | None = None
    with ExitStack() as stack:
        try:
            for event in session.reply(text):
                if isinstance(event, ReplyStart):
                    stack.enter_context(cancel_on_interrupt(session))
                    if render:
                        reply = out.reply(starts_in_reasoning=event.starts_in_reasoning, tags=event.reasoning_tags)
                elif isinstance(event, Segment) and reply is not None:
                    reply.write((event,))
        finally:
            if reply is not None:
                reply.end()
    assert session.last is not None  # a reply that ends without an exception is recorded
    return session.last
