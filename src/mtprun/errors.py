"""Exceptions raised by the mtprun library.

Every error a user can cause derives from :class:`MtprunError`. Errors carry data, not command-line
wording: ``option`` names the argument of the library call a bad value came from (``"model"``,
``"draft"``, ...), ``path`` the file a problem is about. The CLI maps each class to an exit code and
each ``option`` to its flag (see ``mtprun.cli._errors``). The library never prints.
"""

from __future__ import annotations


class MtprunError(Exception):
    """Base class of every error mtprun reports to users.

    ``option``: the library argument the problem is about, if any; ``path``: the file, if any."""

    def __init__(self, *args: object, option: str | None = None, path: object = None) -> None:
        super().__init__(*args)
        self.option = option
        self.path = path


class InvalidInputError(MtprunError, ValueError):
    """A value given by the caller is out of range or malformed."""


class ModelError(MtprunError):
    """A model file is missing, unreadable, not GGUF, or does not fit its drafter."""


class ContextOverflowError(MtprunError):
    """The prompt does not fit in the context window."""


class HubError(MtprunError):
    """Resolving or downloading from the Hugging Face Hub failed."""


class HubRepoNotFoundError(HubError):
    """The repository (or the revision) does not exist, or is private and the token has no access."""


class HubAuthError(HubError):
    """The repository is gated or the Hub refused the credentials."""


class HubConnectionError(HubError):
    """The Hub could not be reached (or the connection broke during a transfer)."""


class HubNotCachedError(HubError):
    """Offline, and the requested model is not in the local cache."""


class NoMatchingFileError(HubError):
    """No model file in the repository matches the requested quant; ``quants`` lists what exists."""

    def __init__(self, message: str, quants: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.quants = quants


class UnsafeRemotePathError(HubError):
    """A remote file name would escape the download folder (``..``, backslash, absolute path)."""


class DiskFullError(HubError):
    """Not enough disk space for a download (checked before, or hit during the transfer)."""


class DeviceError(MtprunError):
    """A device is unavailable: the installed llama.cpp has no RPC support, or an RPC server is
    unreachable, refuses, is busy, or speaks another ggml RPC protocol version."""

    exit_code = 1


class EngineClosedError(MtprunError):
    """The engine was used after ``close()``."""


class ChatTemplateError(ModelError):
    """A chat template (from a model file or ``--chat-template-file``) failed to compile or render."""
