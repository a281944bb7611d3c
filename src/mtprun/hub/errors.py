"""Errors from ``huggingface_hub`` and the network, as one line each (a :class:`HubError` subclass)."""

from __future__ import annotations

import errno
import os

from ..errors import (
    DiskFullError,
    HubAuthError,
    HubConnectionError,
    HubError,
    HubRepoNotFoundError,
    UnsafeRemotePathError,
)
from .cache import local_listing
from .plan import Plan, PlannedFile, plan_from_listing
from .settings import HubSettings
from .spec import HfSpec
from .transfer import error_kind, is_network_error


def hub_error(
    exc: BaseException,
    spec: HfSpec,
    settings: HubSettings,
    *,
    revision: str | None,
    local_dir: str | os.PathLike[str] | None,
) -> HubError:
    """What went wrong listing (or reaching) a repository."""
    kind = error_kind(exc)
    status = _status(exc)
    if kind == "gated":
        return HubAuthError(
            f"{spec.repo} is gated: accept its conditions at {settings.endpoint}/{spec.repo}, then {_login_hint(settings)}"
        )
    if kind == "revision":
        return HubRepoNotFoundError(f"revision {revision or 'main'!r} not found in {spec.repo}")
    if kind == "repo":
        return HubRepoNotFoundError(
            f"repository {spec.repo} not found on {settings.endpoint} (if it is private, {_login_hint(settings)})"
        )
    if kind == "disabled":
        return HubRepoNotFoundError(f"repository {spec.repo} has been disabled on {settings.endpoint}")
    if status == 401:
        return HubAuthError(f"the Hub rejected the credentials for {spec.repo} (401): {_login_hint(settings)}")
    if status == 403:
        return HubAuthError(f"access to {spec.repo} denied (403): {_login_hint(settings)}")
    if is_network_error(exc):
        try:
            listing, _, _ = local_listing(spec, revision, settings, local_dir)
            plan_from_listing(spec, listing, want_mtp=False)
            cached = f"; {spec} is already downloaded: run again with `offline` to use it"
        except HubError:
            cached = f"; {spec} is not downloaded either"
        return HubConnectionError(f"cannot reach {settings.endpoint} ({short(exc)}){cached}",
                                  option="offline" if "`offline`" in cached else None)
    if status is not None:
        return HubError(f"the Hub answered {status} for {spec.repo}: {short(exc)}")
    return HubError(f"listing {spec.repo} failed: {type(exc).__name__}: {short(exc)}")


def transfer_error(exc: BaseException, f: PlannedFile, plan: Plan, settings: HubSettings) -> HubError:
    """What went wrong fetching one file of a plan."""
    kind = error_kind(exc)
    if kind in ("gated", "repo") or _status(exc) in (401, 403):
        return hub_error(exc, plan.spec, settings, revision=plan.revision, local_dir=None)
    if kind == "entry" or _status(exc) == 404:
        return HubError(f"{f.path} is listed in {plan.repo} but the Hub has no such file at {plan.commit}")
    if is_network_error(exc) or (isinstance(exc, OSError) and "Consistency check failed" in str(exc)):
        return HubConnectionError(f"download of {f.path} was interrupted ({short(exc)}); run again to resume")
    if isinstance(exc, ValueError) and "Invalid filename" in str(exc):
        return UnsafeRemotePathError(f"refusing remote file name {f.path!r}: {short(exc)}")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return DiskFullError(f"disk full while saving {f.path} ({exc.strerror}); free some space and run again")
    status = _status(exc)
    if status is not None:
        return HubError(f"the Hub answered {status} for {f.path}: {short(exc)}")
    return HubError(f"downloading {f.path} failed: {type(exc).__name__}: {short(exc)}")


def short(exc: BaseException) -> str:
    """The exception's text on one line, at most 200 characters."""
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _login_hint(settings: HubSettings) -> str:
    return "log in with `hf auth login` or set HF_TOKEN" if settings.token is None else "check that HF_TOKEN has access"
