"""The one place OpenAI-protocol errors are rendered: `{"error": {message, type, param, code}}`
(the envelope in `protocols/openai_envelope.py`), parameters named as chat completions names them.

Statuses are OpenAI's: 400 for a bad parameter (with `param`), 401 for a bad key, 404 for an
unknown model, 429 for limits, 402 for an exhausted balance (type `insufficient_quota`), and
500 for everything unexpected: logged with a reference, the message repeating the request id.
Nothing unexpected is ever shown as a 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kimiserve.http.encoding import SafeJSONResponse
from kimiserve.protocols import openai_envelope
from kimiserve.protocols.openai_envelope import WireParameter as WireParameter
from kimiserve.protocols.openai_envelope import from_validation as from_validation

# Domain canonical parameter names, as this protocol spells them. Names not listed pass through
# (translate.py raises with OpenAI names already, e.g. `messages[0].content[1]`).
PARAMETERS: Mapping[str, str | None] = {
    "max_tokens": "max_completion_tokens",
    "messages": "messages",
    "images": "messages",
    "videos": "messages",
    "response_format": "response_format",
    "constraint": "response_format",
    "json_schema": "response_format",
    "grammar": "response_format",
    "model": "model",
    "thinking": "thinking",
    "apiKey": None,  # OpenAI reports key problems without a param
    "body": None,
}


def render(
    exc: BaseException, request_id: str, names: Mapping[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for any exception; `names` overrides PARAMETERS for this request."""
    return openai_envelope.render(exc, request_id, PARAMETERS, names)


def error_response(
    exc: BaseException, request_id: str, names: Mapping[str, str] | None = None
) -> SafeJSONResponse:
    status, body = render(exc, request_id, names)
    return openai_envelope.response(status, body, exc, request_id)
