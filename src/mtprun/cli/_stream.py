"""Running one generation for the CLI: stream its pieces to the renderer, Ctrl-C cancels it."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ..config import GenerationConfig
from ..events import Result, Step
from .ui import ReplyStream


@contextmanager
def cancel_on_interrupt(engine) -> Iterator[None]:
    """While active, Ctrl-C (SIGINT) asks the engine to stop; the reply ends with stop reason "cancelled"."""
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
    """Generate from ``tokens``, streaming accepted pieces to ``reply`` (if any); return the result."""
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
