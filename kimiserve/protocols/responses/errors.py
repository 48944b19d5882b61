"""The one place Responses API errors are rendered: OpenAI's `{"error": {message, type, param,
code}}` with its statuses, params named as the Responses API names them (`max_output_tokens`,
`input[2].content[0]`, `reasoning.effort`, `text.format`). In a stream, after the headers, the
same error becomes the failed response's `error` (`failed_error`).

Unexpected exceptions are 500s, logged with the request id, which the message repeats; nothing
unexpected is ever shown as a 400. (The OpenAI chat protocol renders the same envelope in its own
module: one protocol never imports another.)
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from kimiserve.errors import InsufficientCredits, InvalidRequest, KimiserveError, RateLimited
from kimiserve.http.body import InvalidText
from kimiserve.http.encoding import SafeJSONResponse
from kimiserve.http.request_id import current_request_id

log = logging.getLogger(__name__)

# Domain parameter names, as the Responses API spells them; names not listed pass through
# (translate.py names its own refusals as the client wrote them).
PARAMETERS: Mapping[str, str | None] = {
    "max_tokens": "max_output_tokens",
    "messages": "input",
    "images": "input",
    "videos": "input",
    "constraint": "text.format",
    "json_schema": "text.format",
    "grammar": "text.format",
    "response_format": "text.format",
    "thinking": "reasoning.effort",
    "model": "model",
    "apiKey": None,
    "body": None,
}

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
    "responseNotFound": "not_found",
}

TYPES: Mapping[int, str] = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}

_UNION_LABELS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _snake(code: str) -> str:
    code = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", code)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", code).lower()


def _param_of(loc: Sequence[int | str]) -> str:
    """A pydantic error location as a param: `input[0].content[1].type` (union labels left out)."""
    out = ""
    for item in loc:
        if isinstance(item, int):
            out += f"[{item}]"
        elif item.isidentifier() and item not in _UNION_LABELS and not item[0].isupper():
            out += f".{item}" if out else item
    return out


class WireParameter(InvalidRequest):
    """A request error whose `parameter` is already the wire name."""


def from_validation(exc: ValidationError) -> InvalidRequest:
    """The most telling pydantic error as one InvalidRequest naming its param."""
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


def render(exc: BaseException, request_id: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for any exception."""
    if not isinstance(exc, KimiserveError):
        log.error("internal error in request %s", request_id, exc_info=exc)
        message = f"The server had an error while processing your request (request id {request_id})."
        return 500, _body(message, "server_error", None, "internal_server_error")
    status = exc.status
    code = CODES.get(exc.code, _snake(exc.code))
    kind = TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    if isinstance(exc, InsufficientCredits):
        kind = "insufficient_quota"
    message = exc.message
    if status >= 500:
        log.warning("request %s failed: %s (%s)", request_id, exc.message, exc.code)
        message = f"{message} (request id {request_id})"
    param = None
    if isinstance(exc, WireParameter | InvalidText):
        param = exc.parameter
    elif exc.parameter is not None:
        param = PARAMETERS.get(exc.parameter, exc.parameter)
    return status, _body(message, kind, param, code)


def _body(message: str, kind: str, param: str | None, code: str | None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": kind, "param": param, "code": code}
    request_id = current_request_id.get()
    if request_id is not None:
        error["request_id"] = request_id
    return {"error": error}


def failed_error(exc: BaseException, request_id: str) -> dict[str, Any]:
    """A failure after the stream began, as a failed response's `error` ({code, message})."""
    status, body = render(exc, request_id)
    error: dict[str, Any] = body["error"]
    code = "rate_limit_exceeded" if status == 429 else "server_error" if status >= 500 else "invalid_prompt"
    return {"code": code, "message": error["message"]}


def error_response(exc: BaseException, request_id: str) -> SafeJSONResponse:
    status, body = render(exc, request_id)
    headers = {"x-request-id": request_id}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(math.ceil(exc.retry_after_s))
    return SafeJSONResponse(body, status_code=status, headers=headers)
