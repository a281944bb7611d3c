"""Exceptions raised by the mtprun library.

Every error a user can cause derives from :class:`MtprunError`; the CLI maps each class to a
one-line message and an exit code (see ``mtprun.cli._errors``). The library never prints.
"""

from __future__ import annotations


class MtprunError(Exception):
    """Base class of every error mtprun reports to users."""

    exit_code = 1


class InvalidInputError(MtprunError, ValueError):
    """A value given by the caller is out of range or malformed."""

    exit_code = 2


class ModelError(MtprunError):
    """A model file is missing, unreadable, not GGUF, or does not fit its drafter."""

    exit_code = 3


class ContextOverflowError(MtprunError):
    """The prompt does not fit in the context window."""

    exit_code = 4


class HubError(MtprunError):
    """Resolving or downloading from the Hugging Face Hub failed."""

    exit_code = 5


class EngineClosedError(MtprunError):
    """The engine was used after ``close()``."""

    exit_code = 1


class ChatTemplateError(ModelError):
    """A chat template (from a model file or ``--chat-template-file``) failed to compile or render."""
