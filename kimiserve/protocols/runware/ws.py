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
- All writes go through one bounded queue and one sender; a client that stops reading is
  closed once one frame's send waits `stream_write_timeout_s` (uvicorn waits while the socket's
  buffers are full) or the queue stays full that long: its replies are kept in its session for
  a resume (and getResponse has them: the tasks never depended on the socket).
- A socket with no message for `ws_idle_timeout_s` is closed. `deliveryMethod: stream` is
  HTTP-only (the SDK streams over HTTP POST).
- Frames pass the same input boundary as HTTP bodies (`http.body.parse_json`); replies are
  encoded by `http.encoding`, which cannot fail on any text, and a reply that fails anyway is
  replaced by an error frame for its tasks: one bad reply never ends the session.
- The key is checked again before each task and every `ws_key_recheck_s`: a revoked key gets
  an `invalidApiKey` error frame and the socket is closed (1008).
- Shutdown (`http.shutdown.Drain`): while draining, new tasks are refused with 503 and an idle
  socket is closed at once (1001); at the end of the grace period each task still in flight
  gets a `taskInterrupted` error frame, then the close frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from kimiserve.domain.principal import Principal
from kimiserve.errors import (
    AuthenticationFailed,
    KimiserveError,
    RateLimited,
    ServiceUnavailable,
    UnsupportedFeature,
)
from kimiserve.http.auth import authenticate
from kimiserve.http.body import parse_json
from kimiserve.http.context import Context
from kimiserve.http.encoding import dumps
from kimiserve.http.shutdown import Drain, ServerShuttingDown
from kimiserve.protocols.runware.dispatch import Dispatcher
from kimiserve.protocols.runware.errors import body_error_items, error_item
from kimiserve.protocols.runware.sessions import Message, Session, SessionRegistry
from kimiserve.protocols.runware.validation import task_type_of, task_uuid_of

log = logging.getLogger(__name__)

PONG: Message = {"data": [{"taskType": "ping", "pong": True}]}
CLOSE_WAIT_S = 1.0  # how long the close frame may wait to be written to a client that may not read
CLOSE_IDLE = (1000, "idle timeout")
CLOSE_STUCK = (1008, "client is not reading")
CLOSE_REVOKED = (1008, "API key revoked")
CLOSE_SHUTDOWN = (1001, "server shutting down")
REVOKED = AuthenticationFailed(
    "The API key of this connection was revoked: the connection is closed.", parameter="apiKey"
)
SHUTTING_DOWN = ServiceUnavailable("The server is shutting down: no new tasks are accepted.")
STREAM_OVER_HTTP = UnsupportedFeature(
    "deliveryMethod 'stream' is served over HTTP POST (server-sent events), not over the WebSocket.",
    parameter="deliveryMethod",
)
NOT_AUTHENTICATED = AuthenticationFailed(
    "Authenticate first: send an authentication task with your apiKey.",
    code="missingApiKey",
    parameter="apiKey",
)


def _http_base(websocket: WebSocket, services: Context) -> str:
    if services.settings.public_url:
        return services.settings.public_url
    base = str(websocket.base_url).rstrip("/")
    return "http" + base[2:] if base.startswith("ws") else base


class Connection:
    def __init__(
        self, websocket: WebSocket, services: Context, sessions: SessionRegistry, drain: Drain | None = None
    ) -> None:
        self._ws = websocket
        self._drain = drain
        self._services = services
        self._sessions = sessions
        self._settings = services.settings
        self._dispatcher = Dispatcher(services, base_url=_http_base(websocket, services))
        # (message, is a task reply): task replies left unsent are kept in the session.
        self._queue: asyncio.Queue[tuple[Message, bool]] = asyncio.Queue(maxsize=self._settings.ws_send_queue)
        self._sending: tuple[Message, bool] | None = None
        self._stuck = asyncio.Event()
        self._revoked = asyncio.Event()
        self._closing = False
        self._close: tuple[int, str] = (1000, "")
        self._principal: Principal | None = None
        self._key: str | None = None  # the key the principal came from (None in open mode)
        self._session: Session | None = None
        self._in_flight: dict[int, tuple[str | None, str | None]] = {}  # id → (taskType, taskUUID)
        self._idle = asyncio.Event()  # set while no task is in flight
        self._idle.set()
        self._holding = False  # whether this socket holds the shutdown's grace period

    async def run(self) -> None:
        await self._ws.accept()
        owned = [
            asyncio.create_task(self._receive_loop(), name="ws-receive"),
            asyncio.create_task(self._send_loop(), name="ws-send"),
            asyncio.create_task(self._stuck.wait(), name="ws-stuck"),
            asyncio.create_task(self._key_watch(), name="ws-key-watch"),
            asyncio.create_task(self._until_revoked(), name="ws-revoked"),
        ]
        if self._drain is not None:
            owned.append(asyncio.create_task(self._shutdown_watch(self._drain), name="ws-shutdown"))
        try:
            done, _ = await asyncio.wait(owned, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = None if task.cancelled() else task.exception()
                if error is not None and not isinstance(error, (WebSocketDisconnect, OSError)):
                    log.error("websocket %s failed", task.get_name(), exc_info=error)
        finally:
            self._closing = True
            self._busy(False)
            await _cancel_all(owned)
            self._cleanup()
            if self._ws.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):  # the client may be gone, or not reading
                    async with asyncio.timeout(CLOSE_WAIT_S):
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
            self._queue.put_nowait((message, task_reply))
            return True
        except asyncio.QueueFull:
            pass
        stall_s = self._settings.stream_write_timeout_s
        try:
            await asyncio.wait_for(self._queue.put((message, task_reply)), timeout=stall_s)
        except TimeoutError:
            log.warning("websocket send queue full for %.0f s: closing the socket", stall_s)
            self._stuck_now()
            return False
        # Room came as the socket closed: the queue is no longer read, so the session keeps it.
        return not self._closing

    def _stuck_now(self) -> None:
        self._close = CLOSE_STUCK
        self._stuck.set()

    async def _send_loop(self) -> None:
        stall_s = self._settings.stream_write_timeout_s
        while True:
            self._sending = await self._queue.get()
            try:
                async with asyncio.timeout(stall_s):  # uvicorn's send waits while the socket is full
                    await self._ws.send_text(_render(self._sending[0]))
            except TimeoutError:
                log.warning("websocket frame unsent for %.0f s: the client is not reading", stall_s)
                self._stuck_now()
                return  # ends the connection; the unsent reply goes to the session
            self._sending = None

    async def _flush(self, timeout_s: float) -> None:
        """Wait (a little) until what is queued has been written."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (not self._queue.empty() or self._sending is not None) and loop.time() < deadline:
            await asyncio.sleep(0.01)

    # ---- watches --------------------------------------------------------------------------

    async def _key_watch(self) -> None:
        """Every `ws_key_recheck_s`, check the key again (a revoked one ends the socket)."""
        while True:
            await asyncio.sleep(self._settings.ws_key_recheck_s)
            await self._key_revoked()

    async def _until_revoked(self) -> None:
        await self._revoked.wait()
        self._close = CLOSE_REVOKED
        await self._flush(1.0)

    async def _key_revoked(self) -> AuthenticationFailed | None:
        """Check the socket's key again; once revoked, queue the error frame and end the socket."""
        if self._key is None:
            return None
        try:
            await authenticate(self._services, self._key)
        except AuthenticationFailed:
            self._key = self._principal = None
            await self._reply({"errors": [error_item(REVOKED, task_type="authentication", task_uuid=None)]})
            self._revoked.set()
            return REVOKED
        except Exception:  # storage unavailable: keep the socket; the next check decides
            log.warning("websocket key re-check failed", exc_info=True)
        return None

    async def _shutdown_watch(self, drain: Drain) -> None:
        """Let tasks in flight finish within the grace period, then tell the client and close."""
        await drain.draining.wait()
        if self._in_flight:
            ending = asyncio.ensure_future(drain.ending.wait())
            idle = asyncio.ensure_future(self._idle.wait())
            await asyncio.wait({ending, idle}, return_when=asyncio.FIRST_COMPLETED)
            ending.cancel()
            idle.cancel()
        with drain.held():
            for task_type, task_uuid in list(self._in_flight.values()):
                item = error_item(ServerShuttingDown(), task_type=task_type, task_uuid=task_uuid)
                await self._reply({"errors": [item]})
            self._close = CLOSE_SHUTDOWN
            await self._flush(drain.end_s / 2)
            self._busy(False)

    def _busy(self, busy: bool) -> None:
        """Hold the shutdown's grace period while tasks are in flight on an open socket."""
        if self._drain is not None and busy != self._holding:
            self._holding = busy
            (self._drain.hold if busy else self._drain.release)()

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
            await self._frame(text if text is not None else event.get("bytes") or b"")

    async def _frame(self, data: str | bytes) -> None:
        try:
            payload = parse_json(data)
        except KimiserveError as exc:  # the same boundary as HTTP bodies: one error per task
            for item in body_error_items(exc, None):
                await self._reply({"errors": [item]})
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
        self._key = key if isinstance(key, str) and key else None
        requested = requested if isinstance(requested, str) else None
        await self._sessions.adopt(principal.account_id, requested)  # one served by another replica
        session = self._take_session(principal, requested)
        await self._reply({"data": [{"taskType": "authentication", "connectionSessionUUID": session.id}]})
        for message in self._sessions.attach(session, self):
            await self.offer(message)
        for message in await self._sessions.attached(session):  # buffered in the shared Redis
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
        if self._drain is not None and self._drain.draining.is_set():
            await self._reply(
                {"errors": [error_item(SHUTTING_DOWN, task_type=task_type, task_uuid=task_uuid)]}
            )
            return
        revoked = await self._key_revoked()
        if revoked is not None:
            await self._reply({"errors": [error_item(revoked, task_type=task_type, task_uuid=task_uuid)]})
            return
        if isinstance(raw, dict) and raw.get("deliveryMethod") == "stream":
            await self._reply(
                {"errors": [error_item(STREAM_OVER_HTTP, task_type=task_type, task_uuid=task_uuid)]}
            )
            return
        if len(self._in_flight) >= self._settings.ws_max_in_flight:
            exc = RateLimited(
                f"At most {self._settings.ws_max_in_flight} tasks may run at once per connection."
            )
            await self._reply({"errors": [error_item(exc, task_type=task_type, task_uuid=task_uuid)]})
            return
        assert self._session is not None
        ticket = id(raw)
        self._in_flight[ticket] = (task_type, task_uuid)
        self._idle.clear()
        self._busy(True)
        self._sessions.spawn(self._run_task(principal, self._session, raw, ticket))

    async def _run_task(self, principal: Principal, session: Session, raw: Any, ticket: int) -> None:
        try:
            items = await self._dispatcher.run_task(principal, raw)
            message: Message | None = {"data": items} if items else None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            message = {"errors": [error_item(exc, task_type=task_type_of(raw), task_uuid=task_uuid_of(raw))]}
        finally:
            self._in_flight.pop(ticket, None)
            if not self._in_flight:
                self._idle.set()
                self._busy(False)
        if message is not None:
            await self._sessions.deliver(session, message)


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel and wait for `tasks`, cancelling again any that swallowed the first cancellation
    (asyncio.wait_for on Python 3.11 can, when its inner await completes at the same moment)."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)


def _render(message: Message) -> str:
    """The frame's text. `dumps` cannot fail on text; should a reply fail anyway, its tasks get
    an error frame instead, so one bad reply never ends the session or loops on resume."""
    try:
        return dumps(message)
    except Exception as exc:
        items = [*message.get("data", []), *message.get("errors", [])]
        routed = {(task_type_of(i), task_uuid_of(i)) for i in items if isinstance(i, dict)} or {(None, None)}
        return dumps(
            {"errors": [error_item(exc, task_type=t, task_uuid=u) for t, u in sorted(routed, key=str)]}
        )


async def websocket_endpoint(websocket: WebSocket) -> None:
    services: Context = websocket.app.state.services
    sessions: SessionRegistry = websocket.app.state.runware_sessions
    drain: Drain | None = getattr(websocket.app.state, "drain", None)
    await Connection(websocket, services, sessions, drain).run()


def routes() -> list[BaseRoute]:
    return [WebSocketRoute("/", websocket_endpoint), WebSocketRoute("/v1", websocket_endpoint)]
