"""mtprun: a local LLM runner built for Multi-Token Prediction speculative decoding."""

from ._version import __version__

# Everything is imported lazily (PEP 562): `import mtprun` costs nothing, so the CLI can install
# its Ctrl-C handling before any real work, and the engine loads the native extension only when used.
_EXPORTS = {
    "Engine": "engine",
    "ModelInfo": "engine",
    "choose_draft_length": "engine",
    "DraftPolicy": "engine",
    "ChatSession": "session",
    "ChatTemplate": "chat",
    "ModelConfig": "config",
    "GenerationConfig": "config",
    "SamplingConfig": "config",
    "SpecConfig": "config",
    "PolicyCosts": "config",
    "MtprunError": "errors",
    "ChatReply": "events",
    "GenerationStats": "events",
    "PolicyEstimates": "events",
    "ReplyStart": "events",
    "Result": "events",
    "Segment": "events",
    "Step": "events",
    "TokenPiece": "events",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mtprun' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = list(_EXPORTS)
