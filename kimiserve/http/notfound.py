"""Which protocol a request outside every route speaks, so its refusal is one its client reads.

A request that no route answers (an unknown path, a method a path does not take), or one refused
before its route ran (shutting down, a bug), still has a client that parses errors its own way:
the openai SDK reads `{"error": {message, type, param, code}}`, the anthropic SDK reads
`{"type": "error", "error": {type, message}}`, Runware's SDKs read `{"errors": [...]}`. The
request tells which, in this order:

1. an `anthropic-version` header, or a path `/v1/messages` or below it: Anthropic;
2. a path `/v1/responses` or below it: the Responses API (OpenAI's envelope, its param names);
3. any other path below `/v1/` (`/v1/embeddings`, `/v1/completions`, `/v1/chat/...`,
   `/v1/models...`): the OpenAI family, whose SDKs all share that prefix;
4. anything else (`/`, `/v1` itself — Runware's task endpoints — and every other path): Runware.

This module only decides; each protocol's own error mapping renders the body (`app.refusal`).
"""

from __future__ import annotations

from typing import Literal

from starlette.types import Scope

Protocol = Literal["openai", "responses", "anthropic", "runware"]


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def protocol_of(scope: Scope) -> Protocol:
    """The protocol of an HTTP or WebSocket scope, by its headers and path (see the module doc)."""
    path: str = scope.get("path", "")
    headers: list[tuple[bytes, bytes]] = scope.get("headers") or []
    if _under(path, "/v1/messages") or any(name.lower() == b"anthropic-version" for name, _ in headers):
        return "anthropic"
    if _under(path, "/v1/responses"):
        return "responses"
    if path.startswith("/v1/"):
        return "openai"
    return "runware"
