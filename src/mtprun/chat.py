"""Chat: messages → prompt text through the model's own (untrusted) Jinja template, and the
reasoning/answer split of a streamed reply. No Rich, no ggml.

- :class:`ChatTemplate` renders messages the way Hugging Face ``apply_chat_template`` does
  (``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``, ``raise_exception``,
  ``strftime_now``, ``tojson``, plus template kwargs such as ``enable_thinking``), in Jinja2's
  immutable sandbox with limits on the few operations that can exhaust memory. Any failure becomes
  a :class:`~mtprun.errors.ChatTemplateError` that names the model.
- :class:`Conversation` keeps the messages and the token ids the engine has already processed, so
  each turn hands the engine the whole conversation but only new tokens need processing.
- :class:`ReasoningSplitter` turns streamed text pieces into reasoning and answer segments,
  handling ``<think>``/``</think>`` tags split across pieces and prompts that open the block.

:class:`mtprun.session.ChatSession` puts them together into a chat turn over an engine.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from .errors import ChatTemplateError, InvalidInputError
from .events import Segment, SegmentKind

# The fallback for models without a template: ChatML, which many GGUF chat models use.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Budgets for untrusted templates (code from a downloaded file): one value (a repetition, a
# padded string, a power) may hold MAX_TEMPLATE_VALUE characters/items/bits, a render may produce
# MAX_TEMPLATE_OUTPUT characters and run RENDER_SECONDS.
MAX_TEMPLATE_VALUE = 1 << 20
MAX_TEMPLATE_OUTPUT = 1 << 22
RENDER_SECONDS = 5.0
MAX_TEMPLATE_FILE = 1 << 20  # bytes of a --chat-template-file
MAX_KWARGS_TEXT = 1 << 20  # characters of --chat-template-kwargs
MAX_KWARGS_DEPTH = 32  # nesting of --chat-template-kwargs
_WIDTH = __import__("re").compile(r"\d{6,}")  # a field width or precision of 100000 or more


class _BudgetExceeded(Exception):
    """A template went past one of its budgets (not catchable by the template)."""


def read_text_file(path: str | Path, *, limit: int, what: str) -> str:
    """UTF-8 text of a file (``-``: stdin), at most ``limit`` bytes, else InvalidInputError.
    Device files such as /dev/zero are read only up to the limit."""
    import sys

    name = str(path)
    try:
        if name == "-":
            stream = sys.stdin.buffer if sys.stdin is not None and not sys.stdin.closed else None
            if stream is None:
                raise InvalidInputError(f"cannot read {what} from stdin: it is closed")
            data = stream.read(limit + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
    except OSError as exc:
        raise InvalidInputError(f"cannot read {what} {name[:200]!r}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise InvalidInputError(f"{what} {name[:200]!r} is larger than {limit >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"cannot read {what} {name[:200]!r}: not UTF-8 text (byte {exc.start})") from None

Role = Literal["system", "user", "assistant"]


def parse_template_kwargs(text: str | None) -> dict[str, Any]:
    """Parse the template kwargs (a JSON object) or raise InvalidInputError (option ``template_kwargs``)."""
    if text is None or not text.strip():
        return {}
    if len(text) > MAX_KWARGS_TEXT:
        raise InvalidInputError(f"template_kwargs is longer than {MAX_KWARGS_TEXT} characters", option="template_kwargs")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"template_kwargs is not valid JSON ({exc.msg} at character {exc.pos}): {text[:200]!r}", option="template_kwargs") from None
    except (RecursionError, ValueError) as exc:  # nested too deep; integers with too many digits
        raise InvalidInputError(f"template_kwargs cannot be read: {'nested too deeply' if isinstance(exc, RecursionError) else exc}", option="template_kwargs") from None
    if _depth(value) > MAX_KWARGS_DEPTH:
        raise InvalidInputError(f"template_kwargs is nested more than {MAX_KWARGS_DEPTH} levels deep", option="template_kwargs")
    if not isinstance(value, dict):
        raise InvalidInputError(f"template_kwargs must be a JSON object such as '{{\"enable_thinking\": false}}', got {text[:200]!r}", option="template_kwargs")
    reserved = {"messages", "add_generation_prompt", "bos_token", "eos_token"} & value.keys()
    if reserved:
        raise InvalidInputError(f"template_kwargs cannot set {', '.join(sorted(reserved))}", option="template_kwargs")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value (iterative: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_KWARGS_DEPTH:
            break
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def _too_big(what: str) -> _BudgetExceeded:
    return _BudgetExceeded(f"{what} larger than the template budget ({MAX_TEMPLATE_VALUE} characters or items)")


def _check_ints(args: Sequence[Any], kwargs: Mapping[str, Any], what: str) -> None:
    for v in (*args, *kwargs.values()):
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_TEMPLATE_VALUE:
            raise _too_big(what)


def _check_format(fmt: Any, what: str) -> None:
    if isinstance(fmt, str) and _WIDTH.search(fmt):
        raise _too_big(what)


def _make_environment():
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.compiler import CodeGenerator
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Codegen(CodeGenerator):
        def visit_Concat(self, node, frame):  # `a ~ b`: through the size check
            self.write("environment.bounded_concat((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    class _Generation(Extension):
        """``{% generation %}...{% endgeneration %}`` (HF assistant masks): renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    class _Sandbox(ImmutableSandboxedEnvironment):
        # The sandbox blocks unsafe attributes, mutation and huge ranges; also bound what can
        # allocate without limit in one step: repetition ("x" * 10**12), powers (10**10**10),
        # %-formatting and padding to huge widths, and the string methods that grow their input.
        intercepted_binops = frozenset({"*", "**", "%", "+"})
        code_generator_class = _Codegen

        @staticmethod
        def bounded_concat(parts) -> str:  # the `~` operator
            text = "".join(map(str, parts))
            if len(text) > MAX_TEMPLATE_VALUE:
                raise _too_big("a concatenated string")
            return text

        def call_binop(self, context, operator, left, right):
            if operator == "**":
                if isinstance(left, int) and isinstance(right, int) and not isinstance(left, bool):
                    if abs(left) > 1 and right > 0 and right * left.bit_length() > MAX_TEMPLATE_VALUE:
                        raise _too_big("a power")
                elif isinstance(right, (int, float)) and abs(right) > 1024:
                    raise _too_big("a power")
                return left**right
            if operator == "%":
                _check_format(left, "a %-formatted string")
                return left % right
            if operator == "+":
                if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                    if len(left) + len(right) > MAX_TEMPLATE_VALUE:
                        raise _too_big("a concatenation")
                return left + right
            if isinstance(left, (str, list, tuple)) and isinstance(right, int):
                size = len(left) * right
            elif isinstance(right, (str, list, tuple)) and isinstance(left, int):
                size = len(right) * left
            else:
                size = 0
            if size > MAX_TEMPLATE_VALUE:
                raise _too_big("a repetition")
            return left * right

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's signature
            owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
            name = getattr(__obj, "__name__", "")
            if isinstance(owner, str):
                if name in ("format", "format_map"):
                    _check_format(owner, "a formatted string")
                elif name in ("ljust", "rjust", "center", "zfill", "expandtabs"):
                    _check_ints(args, kwargs, "a padded string")
                elif name == "replace" and len(args) >= 2 and isinstance(args[1], str):
                    if len(owner) * max(1, len(args[1])) > MAX_TEMPLATE_VALUE and args[0] in owner:
                        raise _too_big("a replaced string")
                elif name == "join" and args and isinstance(args[0], (list, tuple)):
                    if len(owner) * len(args[0]) > MAX_TEMPLATE_VALUE:
                        raise _too_big("a joined string")
            result = super().call(__context, __obj, *args, **kwargs)
            if isinstance(result, (str, list, tuple)) and len(result) > MAX_TEMPLATE_VALUE:
                raise _too_big("a value")
            return result

    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _Generation], autoescape=False)

    def tojson(value, indent=None, separators=None, sort_keys=False, ensure_ascii=False):
        _check_ints((indent,) if isinstance(indent, int) else (), {}, "a JSON indent")
        if isinstance(indent, str) and len(indent) > 64:
            raise _too_big("a JSON indent")
        return json.dumps(value, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=ensure_ascii)

    def bounded(name: str, check: Callable[..., None]):
        original = env.filters[name]

        def wrapper(*args, **kwargs):
            check(*args, **kwargs)
            return original(*args, **kwargs)

        wrapper.__dict__.update(original.__dict__)  # keep Jinja's pass_context/pass_environment marks
        return wrapper

    env.filters["center"] = bounded("center", lambda v, width=80: _check_ints((width,), {}, "a centred string"))
    def check_indent(value, width=4, *args, **kwargs):
        w = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        if abs(w) * (str(value).count("\n") + 1) > MAX_TEMPLATE_VALUE:
            raise _too_big("an indented string")

    env.filters["indent"] = bounded("indent", check_indent)
    env.filters["wordwrap"] = bounded("wordwrap", lambda *a, **k: _check_ints(a[2:] if len(a) > 2 else (), k, "a wrapped string"))
    env.filters["format"] = bounded("format", lambda value, *a, **k: _check_format(value, "a formatted string"))
    env.filters["truncate"] = bounded("truncate", lambda *a, **k: _check_ints(a[2:] if len(a) > 2 else (), k, "a truncated string"))

    def lipsum(n=5, html=True, min=20, max=100):
        _check_ints((n, min, max), {}, "lorem ipsum")
        if n * max > MAX_TEMPLATE_VALUE // 8:
            raise _too_big("lorem ipsum")
        return default_lipsum(n, html, min, max)

    from jinja2.utils import generate_lorem_ipsum as default_lipsum

    env.globals["lipsum"] = lipsum

    def raise_exception(message):
        from jinja2.exceptions import TemplateError

        raise TemplateError(message)

    def strftime_now(fmt):
        if isinstance(fmt, str) and len(fmt) > 1000:
            raise _too_big("a date format")
        return datetime.now().strftime(fmt)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def _describe(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    lineno = getattr(exc, "lineno", None)
    where = f" (line {lineno})" if lineno else ""
    return f"{msg}{where}"


class ChatTemplate:
    """A compiled chat template; rendering is sandboxed and failures name the model."""

    time_budget: float = RENDER_SECONDS  # seconds one render may take

    def __init__(self, source: str, *, model: str, bos_token: str = "", eos_token: str = "", origin: str = "model") -> None:
        """``model`` names the model in errors; ``origin`` says where the template came from:
        ``"model"`` (its GGUF metadata), ``"file"`` (``--chat-template-file``) or ``"builtin"``."""
        self.source = source
        self.model = model
        self.bos_token = bos_token or ""
        self.eos_token = eos_token or ""
        self.origin = origin
        try:
            self._template = _make_environment().from_string(source)
        except Exception as exc:  # TemplateSyntaxError, and anything a malformed source provokes
            raise ChatTemplateError(f"{self._what()} does not compile: {_describe(exc)}", option=self._option) from None

    @classmethod
    def for_model(
        cls, template: str | None, *, model: str, bos_token: str = "", eos_token: str = "", override: Path | None = None
    ) -> ChatTemplate:
        """The template to use: ``override`` (a file) if given, else the model's, else ChatML (origin "builtin")."""
        if override is not None:
            source = read_text_file(override, limit=MAX_TEMPLATE_FILE, what="chat template file")
            return cls(source, model=model, bos_token=bos_token, eos_token=eos_token, origin=f"file {override}")
        if template:
            return cls(template, model=model, bos_token=bos_token, eos_token=eos_token, origin="model")
        return cls(CHATML_TEMPLATE, model=model, bos_token=bos_token, eos_token=eos_token, origin="builtin")

    @property
    def is_builtin(self) -> bool:
        return self.origin == "builtin"

    @property
    def reasoning_tags(self) -> tuple[str, str]:
        return reasoning_tags(self.source)

    @property
    def _option(self) -> str | None:
        """A model's own template that fails can be replaced (``template_file``); others are the caller's."""
        return "template_file" if self.origin == "model" else None

    def _what(self) -> str:
        if self.origin == "model":
            return f"the chat template of model {self.model!r}"
        if self.origin == "builtin":
            return f"the built-in ChatML template (used for model {self.model!r})"
        return f"chat template {self.origin[5:]!r} (for model {self.model!r})"


    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True, kwargs: Mapping[str, Any] | None = None) -> str:
        """Render ``messages`` (dicts with ``role`` and ``content``) to prompt text."""
        context: dict[str, Any] = {
            "tools": None,
            "documents": None,
            **(kwargs or {}),
            "messages": [dict(m) for m in messages],
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        try:
            text = _render_bounded(self._template, context, self.time_budget)
        except _BudgetExceeded as exc:
            raise ChatTemplateError(f"{self._what()} failed to render: {exc}", option=self._option) from None
        except RecursionError:
            raise ChatTemplateError(f"{self._what()} failed to render: recursion too deep", option=self._option) from None
        except MemoryError:
            raise ChatTemplateError(f"{self._what()} failed to render: out of memory", option=self._option) from None
        except Exception as exc:  # TemplateError, SecurityError, TypeError, ... from untrusted code
            raise ChatTemplateError(f"{self._what()} failed to render: {_describe(exc)}", option=self._option) from None
        return text

    def generation_prompt(self, messages: Sequence[Mapping[str, Any]], kwargs: Mapping[str, Any] | None = None) -> str:
        """The text the template adds for ``add_generation_prompt`` (e.g. ``<|im_start|>assistant\\n<think>\\n``)."""
        with_prompt = self.render(messages, add_generation_prompt=True, kwargs=kwargs)
        without = self.render(messages, add_generation_prompt=False, kwargs=kwargs)
        return with_prompt[len(without):] if with_prompt.startswith(without) else ""


def _render_bounded(template, context: dict[str, Any], seconds: float) -> str:
    """Render with a time budget (checked between template statements, by a trace function that
    also covers non-main threads) and an output budget (checked as the output streams)."""
    import sys
    import time

    deadline = time.monotonic() + seconds
    count = 0

    def trace(frame, event, arg):
        nonlocal count
        count += 1
        if count & 255 == 0 and time.monotonic() > deadline:
            raise _BudgetExceeded(f"it ran longer than {seconds:g} s")
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        parts: list[str] = []
        size = 0
        for piece in template.generate(context):
            size += len(piece)
            if size > MAX_TEMPLATE_OUTPUT:
                raise _BudgetExceeded(f"it produced more than {MAX_TEMPLATE_OUTPUT} characters")
            parts.append(piece)
        return "".join(parts)
    finally:
        sys.settrace(previous)


# --- reasoning split -----------------------------------------------------------------------------

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
GEMMA4_THOUGHT = ("<|channel>thought", "<channel|>")  # Gemma 4's thought channel


def reasoning_tags(template: str | None) -> tuple[str, str]:
    """The tags that frame a reasoning block for a chat template: Gemma 4's thought channel when the
    template uses it, else ``<think>``/``</think>`` (Qwen, DeepSeek and most others)."""
    if template and "<|channel>" in template and "<channel|>" in template:
        return GEMMA4_THOUGHT
    return THINK_OPEN, THINK_CLOSE


def opens_reasoning(generation_prompt: str, open_tag: str = THINK_OPEN, close_tag: str = THINK_CLOSE) -> bool:
    """Whether a generation prompt leaves a reasoning block open (the reply starts inside it)."""
    i = generation_prompt.rfind(open_tag)
    return i >= 0 and generation_prompt.find(close_tag, i) < 0


class ReasoningSplitter:
    """Splits streamed text into reasoning and answer.

    A reply may open a reasoning block only at its start (after whitespace), or start inside one
    when the prompt opened it (``in_reasoning=True``); after the block closes, everything is
    answer. Tags split across pieces are recognised: text that might be the start of a tag is held
    back until the next piece (or :meth:`flush`) decides.
    """

    def __init__(self, *, in_reasoning: bool = False, open_tag: str = THINK_OPEN, close_tag: str = THINK_CLOSE) -> None:
        self.open_tag, self.close_tag = open_tag, close_tag
        self.state: Literal["start", "reasoning", "answer"] = "reasoning" if in_reasoning else "start"
        self._buf = ""
        self._flags: list[bool] = []

    def feed(self, text: str, from_draft: bool = False) -> list[Segment]:
        self._buf += text
        self._flags += [from_draft] * len(text)
        out: list[Segment] = []
        while self._buf:
            if self.state == "answer":
                self._emit(out, "answer", len(self._buf))
                break
            if self.state == "start":
                stripped = self._buf.lstrip()
                lead = len(self._buf) - len(stripped)
                if stripped.startswith(self.open_tag):
                    self._emit(out, "answer", lead)
                    self._emit(out, "open", len(self.open_tag), whole=True)
                    self.state = "reasoning"
                    continue
                if self.open_tag.startswith(stripped):  # whitespace and maybe a partial tag: wait
                    break
                self.state = "answer"
                continue
            # reasoning
            i = self._buf.find(self.close_tag)
            if i >= 0:
                self._emit(out, "reasoning", i)
                self._emit(out, "close", len(self.close_tag), whole=True)
                self.state = "answer"
                continue
            keep = _partial_suffix(self._buf, self.close_tag)
            self._emit(out, "reasoning", len(self._buf) - keep)
            break
        return out

    def flush(self) -> list[Segment]:
        """End of the reply: whatever is held back is plain text of the current section."""
        out: list[Segment] = []
        self._emit(out, "reasoning" if self.state == "reasoning" else "answer", len(self._buf))
        return out

    def _emit(self, out: list[Segment], kind: SegmentKind, n: int, *, whole: bool = False) -> None:
        """Move ``n`` characters to ``out``; text is grouped by draft flag, a tag (``whole``) is one segment."""
        if n <= 0:
            return
        text, flags = self._buf[:n], self._flags[:n]
        self._buf, self._flags = self._buf[n:], self._flags[n:]
        if whole:
            out.append(Segment(kind, text, all(flags)))
            return
        start = 0
        for j in range(1, n + 1):  # group characters with the same draft flag
            if j == n or flags[j] != flags[start]:
                out.append(Segment(kind, text[start:j], flags[start]))
                start = j


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


def split_reasoning(text: str, *, in_reasoning: bool = False, tags: tuple[str, str] = (THINK_OPEN, THINK_CLOSE)) -> tuple[str, str]:
    """(reasoning, answer) of a whole reply, without the tags."""
    sp = ReasoningSplitter(in_reasoning=in_reasoning, open_tag=tags[0], close_tag=tags[1])
    segs = sp.feed(text) + sp.flush()
    return (
        "".join(s.text for s in segs if s.kind == "reasoning"),
        "".join(s.text for s in segs if s.kind == "answer"),
    )


# --- conversation --------------------------------------------------------------------------------

Tokenize = Callable[[str, bool], list[int]]
"""``tokenize(text, add_special)`` with special tokens parsed (the engine's tokenizer)."""


@dataclass(frozen=True)
class Turn:
    """What to hand the engine for one reply."""

    tokens: list[int]  # the whole conversation so far, ending with the generation prompt
    text: str  # the rendered prompt text
    n_new: int  # tokens not already known from earlier turns (those the engine must process)
    starts_in_reasoning: bool  # the template opened a reasoning block in the generation prompt


class Conversation:
    """A chat's messages plus the exact token ids the engine has processed and generated.

    The first turn renders the conversation with the template and tokenizes it. Later turns keep
    every earlier token id exactly as the engine saw or generated it and append only what the
    template puts after the last reply: the end of the assistant message, the new user message and
    the generation prompt (found by rendering the conversation with a unique placeholder as the
    last reply). The engine's cache then covers everything but the new tokens -- which matters
    for hybrid models (Qwen3.5/3.6) whose recurrent state cannot be rewound to a shared prefix.

    As in llama-cli's conversation mode, the model thus sees its earlier replies as it wrote them,
    reasoning included, even where the template would drop earlier reasoning when rendering the
    whole conversation anew. If the template does not render the reply where expected, the whole
    conversation is rendered and tokenized again (the engine reuses what still matches).
    """

    def __init__(
        self,
        template: ChatTemplate,
        tokenize: Tokenize,
        *,
        system: str | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
        add_bos: bool = True,
    ) -> None:
        self.template = template
        self.tokenize = tokenize
        self.system = system
        self.template_kwargs = dict(template_kwargs or {})
        self.add_bos = add_bos
        self.messages: list[dict[str, str]] = []
        self._tokens: list[int] = []  # what the engine has seen (prompts + replies) ...
        self._text = ""  # ... and the text those tokens spell
        self._undo: tuple[list[dict[str, str]], list[int], str] | None = None
        self.clear()

    def clear(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self._tokens, self._text = [], ""
        self._undo = None

    @property
    def n_tokens(self) -> int:
        return len(self._tokens)

    def _tokenize_full(self, text: str) -> list[int]:
        bos = self.template.bos_token
        add = self.add_bos and not (bos and text.startswith(bos))
        return self.tokenize(text, add)

    def _after_last_reply(self, user: dict[str, str]) -> str | None:
        """What the template renders after the last reply when ``user`` follows it (None: unknown)."""
        placeholder = "MTPRUN" + secrets.token_hex(12) + "REPLY"
        messages = [*self.messages[:-1], {"role": "assistant", "content": placeholder}, user]
        text = self.template.render(messages, add_generation_prompt=True, kwargs=self.template_kwargs)
        i = text.find(placeholder)
        if i < 0 or text.find(placeholder, i + 1) >= 0:
            return None
        return text[i + len(placeholder):]

    def prompt(self, user_text: str) -> Turn:
        """Add a user message and return the tokens for the assistant's reply."""
        user = {"role": "user", "content": user_text}
        messages = [*self.messages, user]
        gen = self.template.generation_prompt(messages, self.template_kwargs)
        suffix = None
        if self._tokens and self.messages and self.messages[-1]["role"] == "assistant":
            suffix = self._after_last_reply(user)
        if suffix is not None:
            rest = self.tokenize(suffix, False)
            tokens, text, n_new = self._tokens + rest, self._text + suffix, len(rest)
        else:
            text = self.template.render(messages, add_generation_prompt=True, kwargs=self.template_kwargs)
            tokens = self._tokenize_full(text)
            n_new = len(tokens) - _common_prefix(tokens, self._tokens)
        self._undo = (self.messages, self._tokens, self._text)
        self.messages = messages
        self._tokens, self._text = tokens, text
        return Turn(tokens=tokens, text=text, n_new=n_new, starts_in_reasoning=opens_reasoning(gen, *self.template.reasoning_tags))

    def add_reply(self, text: str, tokens: Iterable[int]) -> None:
        """Record the assistant's reply: its text (as generated) and the token ids that spell it."""
        self.messages.append({"role": "assistant", "content": text})
        self._undo = None
        self._tokens = self._tokens + list(tokens)
        self._text = self._text + text

    def undo_prompt(self) -> None:
        """Forget the last :meth:`prompt` when no reply was recorded (e.g. it did not fit the context)."""
        if self._undo is not None and self.messages and self.messages[-1]["role"] == "user":
            self.messages, self._tokens, self._text = self._undo
        self._undo = None


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
