"""OpenAI's error envelope, `{"error": {message, type, param, code}}`, for the two protocols that
speak it (chat completions, `protocols/openai`; the Responses API, `protocols/responses`): each
keeps its one mapping point (its own `errors.py`, naming parameters its way) over this module, so
neither imports the other.

Statuses are OpenAI's: 400 for a bad parameter (with `param`), 401 for a bad key, 404 for an
unknown model, 429 for limits, 402 for an exhausted balance (type `insufficient_quota`), and
500 for everything unexpected: logged once with a reference, the message repeating the request
id. Nothing unexpected is ever shown as a 400.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from kimiserve.errors import (
    InsufficientCredits,
    InvalidRequest,
    KimiserveError,
    RateLimited,
    as_kimiserve_error,
)
from kimiserve.http.body import InvalidText
from kimiserve.http.encoding import SafeJSONResponse
from kimiserve.http.request_id import current_request_id

log = logging.getLogger(__name__)

# Domain error codes, as OpenAI spells them; others go from camelCase to snake_case.
CODES: Mapping[str, str] = {
    "invalidModel": "model_not_found",
    "invalidApiKey": "invalid_api_key",
    "missingApiKey": "invalid_api_key",
    "invalidParameter": "invalid_value",
    "unsupportedParameter": "unsupported_parameter",
    "unsupportedFeature": "unsupported_parameter",
    "invalidGrammar": "invalid_value",
    "insufficientCredits": "insufficient_quota",
    "rateLimitExceeded": "rate_limit_exceeded",
    "inferenceError": "server_error",
}

TYPES: Mapping[int, str] = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}

_UNION_LABELS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _snake(code: str) -> str:
    """camelCase → snake_case, acronyms kept whole: invalidJSON → invalid_json,
    conflictTaskUUID → conflict_task_uuid, invalidJSONSchema → invalid_json_schema."""
    code = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", code)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", code).lower()


def _param_of(loc: Sequence[int | str]) -> str:
    """A pydantic error location as OpenAI writes a param: `messages[0].content[1].type`.

    Union member labels (`str`, `list[ContentPart]`, `NamedToolChoice`) are left out.
    """
    out = ""
    for item in loc:
        if isinstance(item, int):
            out += f"[{item}]"
        elif item.isidentifier() and item not in _UNION_LABELS and not item[0].isupper():
            out += f".{item}" if out else item
    return out


class WireParameter(InvalidRequest):
    """A request error whose `parameter` is already the wire name (`max_tokens`, not the
    domain's `max_tokens` → `max_completion_tokens` mapping)."""


def from_validation(exc: ValidationError) -> InvalidRequest:
    """The most telling pydantic error as one InvalidRequest naming its param.

    Of a union's several branch errors, the deepest one that is not a plain type mismatch wins.
    """
    errors = exc.errors(include_url=False)

    def rank(err: Any) -> tuple[int, bool]:
        return (len(_param_of(err["loc"])), not str(err["type"]).endswith("_type"))

    best = max(errors, key=rank)
    param = _param_of(best["loc"]) or None
    if best["type"] == "missing":
        return WireParameter(
            f"Missing required parameter: '{param}'.", parameter=param, code="missing_required_parameter"
        )
    code = "invalid_type" if str(best["type"]).endswith("_type") else "invalid_value"
    where = f"'{param}'" if param else "the request body"
    return WireParameter(f"Invalid value for {where}: {best['msg']}.", parameter=param, code=code)


def render(
    exc: BaseException,
    request_id: str,
    parameters: Mapping[str, str | None],
    names: Mapping[str, str] | None = None,
    codes: Mapping[str, str] = CODES,
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for any exception: domain parameter names spelled by `parameters`
    (the protocol's), overridden by `names` for this request; error codes by `codes`."""
    if not isinstance(exc, KimiserveError):  # a bug: logged once, with its reference
        exc = as_kimiserve_error(exc)
    status = exc.status
    code = codes.get(exc.code, _snake(exc.code))
    kind = TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    if isinstance(exc, InsufficientCredits):
        kind = "insufficient_quota"  # status 402, as the pipeline issue asks (OpenAI itself uses 429)
    message = exc.message
    if status >= 500:
        log.warning("request %s failed: %s (%s)", request_id, exc.message, exc.code)
        message = f"{message} (request id {request_id})"
    param = None
    if isinstance(exc, WireParameter | InvalidText):  # already named as the client wrote it
        param = exc.parameter
    elif exc.parameter is not None:
        param = (names or {}).get(exc.parameter, parameters.get(exc.parameter, exc.parameter))
    return status, _body(message, kind, param, code)


def _body(message: str, kind: str, param: str | None, code: str | None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": kind, "param": param, "code": code}
    request_id = current_request_id.get()
    if request_id is not None:
        error["request_id"] = request_id  # the x-request-id header's id, inside the error too
    return {"error": error}


def response(status: int, body: dict[str, Any], exc: BaseException, request_id: str) -> SafeJSONResponse:
    """The rendered error as an HTTP response, with `x-request-id` and, for a limit, `Retry-After`."""
    headers = {"x-request-id": request_id}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(math.ceil(exc.retry_after_s))
    return SafeJSONResponse(body, status_code=status, headers=headers)
