"""The Runware WebSocket at `/` and `/v1`: one `Connection` object per socket.

accept → three owned tasks (receive loop, send loop, stuck watch) → the first to end ends the
connection → `finally`: cancel the others, hand unsent replies to the session, close.

- Frames are JSON task arrays (a lone object is taken as an array of one); every reply is a
  JSON object `{"data":[…]}` or `{"errors":[…]}`, one frame per task, routed by `taskUUID`.
- `ping` is answered at once with its own pong frame, before or after authentication.
- `authentication` is always answered: the session frame alone, or the `invalidApiKey` error.
- Every other task runs concurrently (at most `ws_max_in_flight` per socket) through the same
  Dispatcher as HTTP; a task before authentication is answered with `missingApiKey` (in open
  mode it runs for the default account).
- All writes go through one bounded queue and one sender; a client that stops reading until
  the queue stays full is closed (its replies are kept in its session for a resume).
- A socket with no message for `ws_idle_timeout_s` is closed. `deliveryMethod: stream` is
  HTTP-only (the SDK streams over HTTP POST).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from kimiserve.errors import AuthenticationFailed, InvalidRequest, RateLimited, UnsupportedFeature
from kimiserve.http.auth import authenticate
from kimiserve.platform.api_keys import Principal
from kimiserve.protocols.runware.dispatch import Dispatcher
from kimiserve.protocols.runware.errors import error_item
from kimiserve.protocols.runware.sessions import Message, Session, SessionRegistry
from kimiserve.protocols.runware.validation import task_type_of, task_uuid_of
from kimiserve.services import Services

log = logging.getLogger(__name__)

PONG: Message = {"data": [{"taskType": "ping", "pong": True}]}
STALL_S = 30.0  # how long a reply may wait for room in a full send queue before the socket is dropped
CLOSE_IDLE = (1000, "idle timeout")
CLOSE_STUCK = (1008, "client is not reading")
STREAM_OVER_HTTP = UnsupportedFeature(
    "deliveryMethod 'stream' is served over HTTP POST (server-sent events), not over the WebSocket.",
    parameter="deliveryMethod",
)
NOT_AUTHENTICATED = AuthenticationFailed(
    "Authenticate first: send an authentication task with your apiKey.",
    code="missingApiKey",
    parameter="apiKey",
)


def _http_base(websocket: WebSocket, services: Services) -> str:
    if services.settings.public_url:
        return services.settings.public_url
    base = str(websocket.base_url).rstrip("/")
    return "http" + base[2:] if base.startswith("ws") else base


class Connection:
    def __init__(self, websocket: WebSocket, services: Services, sessions: SessionRegistry) -> None:
        self._ws = websocket
        self._services = services
        self._sessions = sessions
        self._settings = services.settings
        self._dispatcher = Dispatcher(services, base_url=_http_base(websocket, services))
        # (message, is a task reply): task replies left unsent are kept in the session.
        self._queue: asyncio.Queue[tuple[Message, bool]] = asyncio.Queue(maxsize=self._settings.ws_send_queue)
        self._sending: tuple[Message, bool] | None = None
        self._stuck = asyncio.Event()
        self._closing = False
        self._close: tuple[int, str] = (1000, "")
        self._principal: Principal | None = None
        self._session: Session | None = None
        self._in_flight = 0

    async def run(self) -> None:
        await self._ws.accept()
        owned = [
            asyncio.create_task(self._receive_loop(), name="ws-receive"),
            asyncio.create_task(self._send_loop(), name="ws-send"),
            asyncio.create_task(self._stuck.wait(), name="ws-stuck"),
        ]
        try:
            done, _ = await asyncio.wait(owned, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = None if task.cancelled() else task.exception()
                if error is not None and not isinstance(error, (WebSocketDisconnect, OSError)):
                    log.error("websocket %s failed", task.get_name(), exc_info=error)
        finally:
            self._closing = True
            for task in owned:
                task.cancel()
            await asyncio.gather(*owned, return_exceptions=True)
            self._cleanup()
            if self._ws.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):  # the client may be gone already
                    await self._ws.close(*self._close)

    def _cleanup(self) -> None:
        unsent = [self._sending] if self._sending is not None else []
        while not self._queue.empty():
            unsent.append(self._queue.get_nowait())
        if self._session is not None:
            self._sessions.detach(self._session, self, [m for m, reply in unsent if reply])

    # ---- outlet ---------------------------------------------------------------------------

    async def offer(self, message: Message) -> bool:
        """A task's reply (the session's outlet)."""
        return await self._put(message, True)

    async def _reply(self, message: Message) -> bool:
        """A reply of the connection itself: pong, authentication, frame errors."""
        return await self._put(message, False)

    async def _put(self, message: Message, task_reply: bool) -> bool:
        if self._closing:
            return False
        try:
            await asyncio.wait_for(self._queue.put((message, task_reply)), timeout=STALL_S)
        except TimeoutError:
            log.warning("websocket send queue full for %.0f s: closing the socket", STALL_S)
            self._close = CLOSE_STUCK
            self._stuck.set()
            return False
        return True

    async def _send_loop(self) -> None:
        while True:
            self._sending = await self._queue.get()
            message = self._sending[0]
            await self._ws.send_text(json.dumps(message, separators=(",", ":"), ensure_ascii=False))
            self._sending = None

    # ---- receiving ------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            try:
                event = await asyncio.wait_for(self._ws.receive(), timeout=self._settings.ws_idle_timeout_s)
            except TimeoutError:
                self._close = CLOSE_IDLE
                return
            if event["type"] == "websocket.disconnect":
                return
            text = event.get("text")
            if text is None:
                raw = event.get("bytes") or b""
                text = raw.decode("utf-8", errors="replace")
            await self._frame(text)

    async def _frame(self, text: str) -> None:
        try:
            payload = json.loads(text)
        except ValueError:
            exc = InvalidRequest("The frame is not valid JSON.", code="invalidJSON")
            await self._reply({"errors": [error_item(exc, task_type=None, task_uuid=None)]})
            return
        tasks = payload if isinstance(payload, list) else [payload]
        for raw in tasks:
            task_type = task_type_of(raw)
            if task_type == "ping":
                await self._reply(PONG)
            elif task_type == "authentication":
                await self._authenticate(raw)
            elif self._principal is None and self._settings.open_mode:  # no key needed: no auth frame either
                self._sessions.attach(self._take_session(self._services.default_principal, None), self)
                await self._start(self._services.default_principal, raw)
            elif self._principal is None:
                await self._reply(
                    {
                        "errors": [
                            error_item(NOT_AUTHENTICATED, task_type=task_type, task_uuid=task_uuid_of(raw))
                        ]
                    }
                )
            else:
                await self._start(self._principal, raw)

    async def _authenticate(self, raw: Any) -> None:
        key = raw.get("apiKey")
        requested = raw.get("connectionSessionUUID")
        try:
            principal = await authenticate(self._services, key if isinstance(key, str) else None)
        except Exception as exc:  # a bad key, or storage down: always answer (the SDK waits forever)
            await self._reply({"errors": [error_item(exc, task_type="authentication", task_uuid=None)]})
            return
        session = self._take_session(principal, requested if isinstance(requested, str) else None)
        await self._reply({"data": [{"taskType": "authentication", "connectionSessionUUID": session.id}]})
        for message in self._sessions.attach(session, self):
            await self.offer(message)

    def _take_session(self, principal: Principal, requested: str | None) -> Session:
        """The session to resume, or a new one; the caller attaches this socket to it."""
        if self._session is not None:  # authenticating again on the same socket
            self._sessions.detach(self._session, self, [])
        self._principal = principal
        self._session = self._sessions.open(principal.account_id, requested)
        return self._session

    async def _start(self, principal: Principal, raw: Any) -> None:
        task_type, task_uuid = task_type_of(raw), task_uuid_of(raw)
        if isinstance(raw, dict) and raw.get("deliveryMethod") == "stream":
            await self._reply(
                {"errors": [error_item(STREAM_OVER_HTTP, task_type=task_type, task_uuid=task_uuid)]}
            )
            return
        if self._in_flight >= self._settings.ws_max_in_flight:
            exc = RateLimited(
                f"At most {self._settings.ws_max_in_flight} tasks may run at once per connection."
            )
            await self._reply({"errors": [error_item(exc, task_type=task_type, task_uuid=task_uuid)]})
            return
        assert self._session is not None
        self._in_flight += 1
        self._sessions.spawn(self._run_task(principal, self._session, raw))

    async def _run_task(self, principal: Principal, session: Session, raw: Any) -> None:
        try:
            items = await self._dispatcher.run_task(principal, raw)
            message: Message | None = {"data": items} if items else None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            message = {"errors": [error_item(exc, task_type=task_type_of(raw), task_uuid=task_uuid_of(raw))]}
        finally:
            self._in_flight -= 1
        if message is not None:
            await self._sessions.deliver(session, message)


async def websocket_endpoint(websocket: WebSocket) -> None:
    services: Services = websocket.app.state.services
    sessions: SessionRegistry = websocket.app.state.runware_sessions
    await Connection(websocket, services, sessions).run()


def routes() -> list[BaseRoute]:
    return [WebSocketRoute("/", websocket_endpoint), WebSocketRoute("/v1", websocket_endpoint)]
