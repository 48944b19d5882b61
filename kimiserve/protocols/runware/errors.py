"""The one place Runware errors are rendered: an error object per task, and its HTTP status."""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any

from kimiserve.errors import KimiserveError, RateLimited

log = logging.getLogger(__name__)

DOCS = "https://runware.ai/docs/models/moonshotai-kimi-k2-6"

# Runware answers only with these statuses; the others fold into 400.
_RUNWARE_STATUSES = {400, 401, 402, 403, 429, 500, 503}

# The canonical parameter names of the domain, as Runware spells them.
_PARAMETERS = {
    "max_tokens": "settings.maxTokens",
    "messages": "messages",
    "images": "inputs.images",
    "videos": "inputs.videos",
    "response_format": "settings",
    "model": "model",
}


def to_error(exc: BaseException) -> KimiserveError:
    """Any exception as a KimiserveError; unexpected ones are logged with a reference id."""
    if isinstance(exc, KimiserveError):
        return exc
    ref = uuid.uuid4().hex[:12]
    log.error("internal error ref=%s", ref, exc_info=exc)
    return KimiserveError(f"Internal server error (reference {ref}).")


def error_item(exc: BaseException, *, task_type: str | None, task_uuid: str | None) -> dict[str, Any]:
    err = to_error(exc)
    item: dict[str, Any] = {"code": err.code, "message": err.message}
    if err.parameter:
        item["parameter"] = _PARAMETERS.get(err.parameter, err.parameter)
    if task_type is not None:
        item["taskType"] = task_type
    if task_uuid is not None:
        item["taskUUID"] = task_uuid
    item["documentation"] = DOCS
    return item


def retry_after_header(exc: BaseException) -> dict[str, str]:
    """`Retry-After` (whole seconds) for a rate-limit refusal; no header otherwise."""
    if isinstance(exc, RateLimited):
        return {"Retry-After": str(math.ceil(exc.retry_after_s))}
    return {}


def status_of(exc: BaseException) -> int:
    status = to_error(exc).status
    return status if status in _RUNWARE_STATUSES else 400
