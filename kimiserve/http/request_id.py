"""One request id per HTTP request or WebSocket, and the access log.

The id is `req_<32 hex>` (a client's own `x-request-id`, if it is short and plain, is kept
instead), stored in `scope["state"]["request_id"]`, returned as the `x-request-id` header of
every response, and repeated inside error bodies. The access log line has the method, the
path without its query string, the status, the time and the id: never a body, a header or a
key.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from contextvars import ContextVar

from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("kimiserve.access")

HEADER = "x-request-id"
# The request being served, for error renderers that are not handed the request; tasks started
# while serving it (async work, webhooks) inherit it, as asyncio copies the context.
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def new_request_id() -> str:
    return f"req_{secrets.token_hex(16)}"  # 128 random bits, as a uuid4's hex, without the UUID


def request_id_of(conn: HTTPConnection) -> str:
    """The id the middleware gave this request (a fresh one outside the middleware, in tests)."""
    state = conn.scope.setdefault("state", {})
    rid = state.get("request_id")
    if not isinstance(rid, str):
        rid = state["request_id"] = new_request_id()
    return rid


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(HEADER.encode(), b"").decode("latin-1")
        rid = incoming if _CLIENT_ID.fullmatch(incoming) else new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        token = current_request_id.set(rid)
        started = time.monotonic()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = MutableHeaders(scope=message)
                if HEADER not in headers:
                    headers.append(HEADER, rid)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)
            log.info(
                "%s %s %s %.1fms %s",
                scope.get("method", "WS"),
                scope.get("path", ""),
                status or "-",
                (time.monotonic() - started) * 1000,
                rid,
            )
