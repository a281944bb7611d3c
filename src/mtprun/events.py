"""What a generation yields: typed events, no printing.

``Engine.generate`` yields one :class:`Step` per speculative step (the tokens the target accepted
in one verification pass, each marked whether it came from an accepted draft) and finally one
:class:`Result` with the stop reason and the statistics.

``ChatSession.reply`` (:mod:`mtprun.session`) yields one :class:`ReplyStart`, then the engine's
events with the :class:`Segment` events (reasoning, answer, and the tags between them) each
:class:`Step` spells, and finally the engine's :class:`Result`; a whole reply is a :class:`ChatReply`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .config import AUTO_CEILING

StopReason = Literal["eos", "length", "context", "cancelled"]
"""eos: an end-of-generation token; length: the token budget; context: the context is full;
cancelled: ``Engine.cancel()`` was called."""


@dataclass(frozen=True)
class TokenPiece:
    token: int
    text: str  # decoded text; may be "" while a multi-byte character is incomplete
    from_draft: bool  # True when the token was drafted by the MTP head and accepted


@dataclass(frozen=True)
class Step:
    pieces: tuple[TokenPiece, ...]
    n_drafted: int  # draft tokens verified in this step
    n_accepted: int  # of which accepted

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.pieces)


@dataclass(frozen=True)
class PolicyEstimates:
    """What the adaptive draft-length policy believes after a generation (it keeps learning
    across the generations of one engine)."""

    acceptance_by_position: tuple[float, ...]  # draft position 1, 2, ..., given the earlier ones
    target_seconds_by_batch: tuple[float, ...]  # a target pass over 1, 2, ... tokens (incl. per-step overhead)
    head_seconds: float  # one MTP-head decode
    token_seconds: float = 0.0  # choosing one emitted token from the verify pass's logits (sampling)

    def as_dict(self) -> dict:
        return {
            "acceptance_by_position": list(self.acceptance_by_position),
            "target_seconds_by_batch": list(self.target_seconds_by_batch),
            "head_seconds": self.head_seconds,
            "token_seconds": self.token_seconds,
        }


@dataclass(frozen=True)
class GenerationStats:
    n_prompt_tokens: int  # prompt tokens this generation was given
    n_prompt_reused: int  # of which already in the cache (not processed again)
    prompt_seconds: float
    n_generated: int
    generation_seconds: float
    n_drafted: int
    n_accepted: int
    drafted_by_position: tuple[int, ...]  # drafts verified at draft position 1, 2, ...
    accepted_by_position: tuple[int, ...]  # of which accepted
    n_target_passes: int  # target model decode calls while generating (verification passes)
    draft_seconds: float  # in llama.cpp decodes of the MTP head (drafting and its catch-up)
    verify_seconds: float  # in llama.cpp decodes of the target (verification passes)
    sample_seconds: float  # choosing tokens: drafts, acceptance tests, sampling
    mtp: bool  # whether MTP speculation was used
    adaptive: bool = False  # whether the draft length was chosen per step
    n_max: int = 0  # the draft length (adaptive: its ceiling); 0 without speculation
    steps_by_draft_length: tuple[int, ...] = ()  # steps that drafted 0, 1, ..., n_max tokens
    policy: PolicyEstimates | None = None  # the policy's estimates (with speculation)

    @property
    def acceptance(self) -> float:
        return self.n_accepted / self.n_drafted if self.n_drafted else 0.0

    @property
    def acceptance_by_position(self) -> tuple[float, ...]:
        return tuple(a / d if d else 0.0 for a, d in zip(self.accepted_by_position, self.drafted_by_position))

    @property
    def mean_draft_length(self) -> float:
        """Draft tokens per step (plain steps count as 0)."""
        steps = sum(self.steps_by_draft_length)
        return sum(n * c for n, c in enumerate(self.steps_by_draft_length)) / steps if steps else 0.0

    @property
    def draft_label(self) -> str:
        """How the draft length was set: ``auto``/``auto:N``, ``N``, or ``off``."""
        if not self.mtp:
            return "off"
        if not self.adaptive:
            return str(self.n_max)
        return "auto" if self.n_max == AUTO_CEILING else f"auto:{self.n_max}"

    @property
    def tokens_per_pass(self) -> float:
        return self.n_generated / self.n_target_passes if self.n_target_passes else 0.0

    @property
    def prompt_tps(self) -> float:
        n = self.n_prompt_tokens - self.n_prompt_reused
        return n / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def generation_tps(self) -> float:
        return self.n_generated / self.generation_seconds if self.generation_seconds > 0 else 0.0

    @property
    def overhead_seconds(self) -> float:
        """Generation time outside llama.cpp's decodes and token choice: the loop's own cost
        (batch building, bookkeeping, crossing into Python once per step)."""
        return max(0.0, self.generation_seconds - self.draft_seconds - self.verify_seconds - self.sample_seconds)

    def as_dict(self) -> dict:
        return {
            "prompt_tokens": self.n_prompt_tokens,
            "prompt_tokens_reused": self.n_prompt_reused,
            "prompt_seconds": self.prompt_seconds,
            "prompt_tokens_per_second": self.prompt_tps,
            "generated_tokens": self.n_generated,
            "generation_seconds": self.generation_seconds,
            "generation_tokens_per_second": self.generation_tps,
            "mtp": self.mtp,
            "draft_length": self.draft_label,
            "adaptive": self.adaptive,
            "n_max": self.n_max,
            "steps_by_draft_length": list(self.steps_by_draft_length),
            "mean_draft_length": self.mean_draft_length,
            "policy": self.policy.as_dict() if self.policy else None,
            "drafted": self.n_drafted,
            "accepted": self.n_accepted,
            "acceptance": self.acceptance,
            "drafted_by_position": list(self.drafted_by_position),
            "accepted_by_position": list(self.accepted_by_position),
            "acceptance_by_position": list(self.acceptance_by_position),
            "target_passes": self.n_target_passes,
            "tokens_per_target_pass": self.tokens_per_pass,
            "draft_seconds": self.draft_seconds,
            "verify_seconds": self.verify_seconds,
            "sample_seconds": self.sample_seconds,
            "overhead_seconds": self.overhead_seconds,
        }


@dataclass(frozen=True)
class Result:
    text: str
    tokens: tuple[int, ...]
    stop_reason: StopReason
    stats: GenerationStats


SegmentKind = Literal["reasoning", "answer", "open", "close"]


@dataclass(frozen=True)
class Segment:
    """A run of streamed text: ``reasoning`` or ``answer`` text, or the ``open``/``close`` tag itself.

    ``from_draft`` is the flag the text was fed with (True: accepted MTP drafts); a tag, always one
    segment, counts as drafted only when all of it was."""

    kind: SegmentKind
    text: str
    from_draft: bool = False


@dataclass(frozen=True)
class ReplyStart:
    """A chat reply begins: the conversation went through the template and the tokenizer."""

    n_prompt_tokens: int  # the whole conversation handed to the engine
    n_new_tokens: int  # of which not known from earlier turns (the rest is in the engine's cache)
    starts_in_reasoning: bool  # the template's generation prompt opened a reasoning block
    reasoning_tags: tuple[str, str]  # the tags that open and close a reasoning block


@dataclass(frozen=True)
class ChatReply:
    """One whole chat reply: the engine's result and the reply split into reasoning and answer
    (without the tags)."""

    result: Result
    reasoning: str
    answer: str

    @property
    def text(self) -> str:
        """The reply exactly as generated (tags included)."""
        return self.result.text

    @property
    def stop_reason(self) -> StopReason:
        return self.result.stop_reason

    @property
    def stats(self) -> GenerationStats:
        return self.result.stats
