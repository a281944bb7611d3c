"""Hub settings, read from the environment when used.

``huggingface_hub`` reads several settings once, at import; the ones mtprun honours
(``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE``, ``HF_TOKEN``, ``HF_HUB_OFFLINE``) are read here at
call time and passed explicitly, so they take effect whenever they are set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class HubSettings:
    endpoint: str
    cache_dir: Path
    token: str | None  # None: huggingface_hub's own lookup (stored login)
    offline: bool

    @classmethod
    def from_env(cls) -> HubSettings:
        env = os.environ

        def path(value: str) -> Path:
            return Path(os.path.expandvars(os.path.expanduser(value)))

        cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
        if cache:
            cache_dir = path(cache)
        else:
            home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
            cache_dir = path(home) / "hub"
        offline = any((env.get(k) or "").upper() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
        token = (env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or "").strip() or None
        return cls((env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"), cache_dir, token, offline)

    def storage(self, repo: str) -> Path:
        """The repository's folder in the cache (``models--owner--name``)."""
        return self.cache_dir / ("models--" + repo.replace("/", "--"))
