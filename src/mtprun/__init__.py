"""mtprun: a local LLM runner built for Multi-Token Prediction speculative decoding."""

__version__ = "0.1.0"

from .config import GenerationConfig, ModelConfig, SamplingConfig, SpecConfig
from .errors import MtprunError
from .events import GenerationStats, PolicyEstimates, Result, Step, TokenPiece


def __getattr__(name: str):
    # the engine loads the native extension; import it lazily so `import mtprun` stays light
    if name in ("Engine", "ModelInfo", "choose_draft_length"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(name)


__all__ = [
    "Engine",
    "ModelInfo",
    "choose_draft_length",
    "ModelConfig",
    "GenerationConfig",
    "SamplingConfig",
    "SpecConfig",
    "MtprunError",
    "GenerationStats",
    "PolicyEstimates",
    "Result",
    "Step",
    "TokenPiece",
]
