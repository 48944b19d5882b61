"""Which protocol a request outside every route speaks, so its refusal is one its client reads.

A request that no route answers (an unknown path, a method a path does not take), or one refused
before its route ran (shutting down, a bug), still has a client that parses errors its own way:
the openai SDK reads `{"error": {message, type, param, code}}`, the anthropic SDK reads
`{"type": "error", "error": {type, message}}`, Runware's SDKs read `{"errors": [...]}`. The
request tells which, in this order:

1. an `anthropic-version` header, or a path under `/v1/messages`: Anthropic;
2. a path under `/v1/` (any path below it: `/v1/responses`, `/v1/embeddings`, `/v1/completions`,
   `/v1/chat/...`, `/v1/models...`): the OpenAI family, whose SDKs all share that prefix;
3. anything else (`/`, `/v1` itself — Runware's task endpoints — and every other path): Runware.

This module only decides; each protocol's own error mapping renders the body, except Anthropic's,
which has no protocol package yet and is rendered here (`anthropic_error_body`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from starlette.types import Scope

Protocol = Literal["openai", "anthropic", "runware"]

# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors).
_ANTHROPIC_TYPES: Mapping[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def protocol_of(scope: Scope) -> Protocol:
    """The protocol of an HTTP or WebSocket scope, by its headers and path (see the module doc)."""
    path: str = scope.get("path", "")
    headers: list[tuple[bytes, bytes]] = scope.get("headers") or []
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    if any(name.lower() == b"anthropic-version" for name, _ in headers):
        return "anthropic"
    if path.startswith("/v1/"):
        return "openai"
    return "runware"


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body for a status; unknown statuses ≥ 500 are `api_error`."""
    kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}
