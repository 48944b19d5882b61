"""The one place Responses API errors are rendered: OpenAI's `{"error": {message, type, param,
code}}` with its statuses, params named as the Responses API names them (`max_output_tokens`,
`input[2].content[0]`, `reasoning.effort`, `text.format`). In a stream, after the headers, the
same error becomes the failed response's `error` (`failed_error`).

Unexpected exceptions are 500s, logged with a reference, the message repeating the request id;
nothing unexpected is ever shown as a 400. The envelope is OpenAI's, shared with chat completions
through `protocols/openai_envelope.py` (one protocol never imports another).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kimiserve.http.encoding import SafeJSONResponse
from kimiserve.protocols import openai_envelope
from kimiserve.protocols.openai_envelope import from_validation as from_validation

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

CODES: Mapping[str, str] = {**openai_envelope.CODES, "responseNotFound": "not_found"}


def render(exc: BaseException, request_id: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for any exception."""
    return openai_envelope.render(exc, request_id, PARAMETERS, codes=CODES)


def failed_error(exc: BaseException, request_id: str) -> dict[str, Any]:
    """A failure after the stream began, as a failed response's `error` ({code, message})."""
    status, body = render(exc, request_id)
    error: dict[str, Any] = body["error"]
    code = "rate_limit_exceeded" if status == 429 else "server_error" if status >= 500 else "invalid_prompt"
    return {"code": code, "message": error["message"]}


def error_response(exc: BaseException, request_id: str) -> SafeJSONResponse:
    status, body = render(exc, request_id)
    return openai_envelope.response(status, body, exc, request_id)
