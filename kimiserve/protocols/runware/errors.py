"""The one place Runware errors are rendered: an error object per task, and its HTTP status."""

from __future__ import annotations

import math
from typing import Any

from kimiserve.errors import InvalidRequest, KimiserveError, RateLimited, as_kimiserve_error
from kimiserve.http.body import InvalidText
from kimiserve.http.request_id import current_request_id
from kimiserve.protocols.runware.validation import task_type_of, task_uuid_of

DOCS = "https://runware.ai/docs/models/moonshotai-kimi-k2-6"

# Runware answers only with these statuses, and 413 for a body over the size cap (what proxies
# and HTTP clients understand; the SDK reads the error body whatever the status). Others fold by
# side: a client error into 400, a server-side one into 503 when it is worth retrying (an
# upstream timeout, 504) and 500 otherwise (502): a server-side failure is never a 4xx.
_RUNWARE_STATUSES = {400, 401, 402, 403, 413, 429, 500, 503}
_RETRYABLE = {503, 504}

# The canonical parameter names of the domain, as Runware spells them.
_PARAMETERS = {
    "max_tokens": "settings.maxTokens",
    "messages": "messages",
    "images": "inputs.images",
    "videos": "inputs.videos",
    "response_format": "settings",
    "model": "model",
}


def error_item(exc: BaseException, *, task_type: str | None, task_uuid: str | None) -> dict[str, Any]:
    err = as_kimiserve_error(exc)
    item: dict[str, Any] = {"code": err.code, "message": err.message}
    if err.parameter:
        item["parameter"] = _PARAMETERS.get(err.parameter, err.parameter)
    if task_type is not None:
        item["taskType"] = task_type
    if task_uuid is not None:
        item["taskUUID"] = task_uuid
    item["documentation"] = DOCS
    request_id = current_request_id.get()
    if request_id is not None:
        item["requestId"] = request_id
    return item


def retry_after_header(exc: BaseException) -> dict[str, str]:
    """`Retry-After` (whole seconds) for a rate-limit refusal; no header otherwise."""
    if isinstance(exc, RateLimited):
        return {"Retry-After": str(math.ceil(exc.retry_after_s))}
    return {}


def status_of(exc: BaseException) -> int:
    status = as_kimiserve_error(exc).status
    if status in _RUNWARE_STATUSES:
        return status
    if status >= 500:
        return 503 if status in _RETRYABLE else 500
    return 400


def body_error_items(exc: KimiserveError, tasks: list[Any] | None) -> list[dict[str, Any]]:
    """The errors for a body refused as a whole (unreadable, too deep, bad text), one per task
    where the tasks can be told, so each client-side waiter gets its answer by taskUUID.

    Bad text is reported where it is, the Runware way: the task holding it gets parameter
    `messages.0.content` and code `invalidContent`; its siblings get the same error, naming it.
    """
    if isinstance(exc, InvalidText) and isinstance(exc.document, list):
        tasks = exc.document
    if not tasks:
        return [error_item(exc, task_type=None, task_uuid=None)]
    if not isinstance(exc, InvalidText) or not exc.path or not isinstance(exc.path[0], int):
        return [error_item(exc, task_type=task_type_of(t), task_uuid=task_uuid_of(t)) for t in tasks]
    index, inner = exc.path[0], exc.path[1:]
    parameter = ".".join(str(part) for part in inner) or "task"
    name = next((p for p in reversed(inner) if isinstance(p, str) and p), "task")
    code = "invalid" + name[0].upper() + name[1:]
    items = []
    for i, task in enumerate(tasks):
        message = f"{parameter} contains {exc.what}, which is not allowed in text."
        if i != index:
            message = f"The request was refused: in task {index}, {message}"
        err = InvalidRequest(message, code=code, parameter=parameter if i == index else "body")
        items.append(error_item(err, task_type=task_type_of(task), task_uuid=task_uuid_of(task)))
    return items
