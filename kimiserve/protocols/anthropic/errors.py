"""The one place Anthropic-protocol errors are rendered:
`{"type": "error", "error": {"type", "message"}, "request_id"}`, the request id also in the
`request-id` header (where the `anthropic` SDK reads it).

Statuses and types are Anthropic's: 400 `invalid_request_error`, 401 `authentication_error`,
402 `billing_error` (an exhausted balance), 403 `permission_error`, 404 `not_found_error`, 413
`request_too_large`, 429 `rate_limit_error`, 500 `api_error`, and 529 `overloaded_error` for
every 503 (an engine at capacity, a worker restarting, the server shutting down), which the SDK
retries. Anthropic has no `param` field, so the offending parameter leads the message, spelled
as Anthropic spells locations (`messages.0.content.1.source`). Anything unexpected is a 500
naming the request id, logged, never a 4xx.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from kimiserve.errors import InvalidRequest, KimiserveError, RateLimited
from kimiserve.http.body import InvalidText
from kimiserve.http.encoding import SafeJSONResponse

log = logging.getLogger(__name__)

OVERLOADED = 529

TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    OVERLOADED: "overloaded_error",
}

# Domain parameter names (raised below the protocol) as this protocol spells them.
PARAMETERS: dict[str, str] = {
    "max_tokens": "max_tokens",
    "constraint": "output_config.format",
    "json_schema": "output_config.format",
    "grammar": "output_config.format",
    "images": "messages",
    "videos": "messages",
}


class WireParameter(InvalidRequest):
    """A request error whose `parameter` is already the wire name."""


def location(loc: Sequence[int | str]) -> str:
    """A pydantic location as Anthropic writes one: `messages.0.content.1.text`; union labels
    (`str`, `list[...]`, the capitalized block tags) left out."""
    parts = []
    for item in loc:
        if isinstance(item, int):
            parts.append(str(item))
        elif item.isidentifier() and not item[0].isupper() and item not in ("str", "list", "dict"):
            parts.append(item)
    return ".".join(parts)


def from_validation(exc: ValidationError) -> InvalidRequest:
    """The most telling pydantic error (the deepest, a value error before a type mismatch) as one
    InvalidRequest naming its location."""
    errors = exc.errors(include_url=False)

    def rank(err: Any) -> tuple[int, bool]:
        return (len(location(err["loc"])), not str(err["type"]).endswith("_type"))

    best = max(errors, key=rank)
    where = location(best["loc"]) or None
    if best["type"] == "missing":
        return WireParameter(f"{where}: Field required", parameter=where)
    return WireParameter(f"{where or 'body'}: {best['msg']}", parameter=where)


def _wire_name(exc: KimiserveError) -> str | None:
    if exc.parameter is None:
        return None
    if isinstance(exc, InvalidText):  # the body's path, as Anthropic spells it
        return location(exc.path) or None
    if isinstance(exc, WireParameter):
        return exc.parameter
    return PARAMETERS.get(exc.parameter, exc.parameter)


def render(exc: BaseException, request_id: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for any exception."""
    if not isinstance(exc, KimiserveError):
        log.error("internal error in request %s", request_id, exc_info=exc)
        message = f"Internal server error (request id {request_id})."
        return 500, body("api_error", message, request_id)
    status = OVERLOADED if exc.status == 503 else exc.status
    kind = TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    message = exc.message
    where = _wire_name(exc)
    if where and not isinstance(exc, WireParameter) and not message.startswith(where):
        message = f"{where}: {message}"
    if status >= 500:
        log.warning("request %s failed: %s (%s)", request_id, exc.message, exc.code)
        message = f"{message} (request id {request_id})"
    return status, body(kind, message, request_id)


def body(kind: str, message: str, request_id: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}


def error_response(exc: BaseException, request_id: str) -> SafeJSONResponse:
    status, content = render(exc, request_id)
    headers = {"request-id": request_id, "x-request-id": request_id}
    if isinstance(exc, RateLimited):
        headers["retry-after"] = str(math.ceil(exc.retry_after_s))
    return SafeJSONResponse(content, status_code=status, headers=headers)
