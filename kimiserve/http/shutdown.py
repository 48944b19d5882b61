"""Graceful shutdown, as the app lives it: admitting → draining → ending → stopped.

On SIGTERM the server (cli/serve.py) stops accepting connections and runs `Drain.run`:

- draining: new requests on kept-alive connections, new WebSocket handshakes and new tasks on
  open sockets are refused with 503 in their protocol's format; what is running may finish
  for up to `grace_s`;
- ending: every stream still open gets its protocol's terminal frame (`ServerShuttingDown`
  raised into the renderer: Runware's `error`+`errors` frame, OpenAI's error chunk and
  `[DONE]`), every socket an error frame per task still in flight and a close frame, and any
  other request still running is cancelled and answered 503, within `end_s`;
- then uvicorn closes what is left and the lifespan closes the services, which ends the tasks
  cut off as `taskInterrupted`.

`DrainMiddleware` is the outermost layer: it holds the drain open while a request runs, and
makes the drain of the current request reachable from stream helpers (`current_drain`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kimiserve.errors import ServiceUnavailable

log = logging.getLogger(__name__)

_current: contextvars.ContextVar[Drain | None] = contextvars.ContextVar("kimiserve_drain", default=None)


class ServerShuttingDown(ServiceUnavailable):
    """Raised into a stream, a socket's tasks or a request the shutdown cut off."""

    code = "taskInterrupted"

    def __init__(self) -> None:
        super().__init__(
            "The server is shutting down and ended this request before it finished; "
            "send it again once the server is back (a Runware task under a new taskUUID)."
        )


class Drain:
    def __init__(self, grace_s: float, end_s: float = 2.0) -> None:
        self.grace_s = grace_s
        self.end_s = end_s
        self.draining = asyncio.Event()
        self.ending = asyncio.Event()
        self._holds = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._running: set[asyncio.Task[Any]] = set()  # HTTP requests' tasks, each in its own
        self._cut: set[asyncio.Task[Any]] = set()  # those the ending cancelled

    def running(self, task: asyncio.Task[Any]) -> None:
        """An HTTP request's task, cancelled if it is still running half of `end_s` into ending."""
        self._running.add(task)

    def done(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        self._cut.discard(task)

    def cut_off(self, task: asyncio.Task[Any]) -> bool:
        """Whether the ending cancelled this task."""
        return task in self._cut

    def hold(self) -> None:
        """Until the matching `release`, shutdown waits (up to its grace period) for this work."""
        self._holds += 1
        self._idle.clear()

    def release(self) -> None:
        self._holds -= 1
        if self._holds == 0:
            self._idle.set()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.hold()
        try:
            yield
        finally:
            self.release()

    async def run(self) -> None:
        """Drain, end what is left, return once everything has ended or `end_s` has passed."""
        self.draining.set()
        if self._holds:
            log.info(
                "shutdown: waiting up to %.0f s for %d request(s) and socket(s)", self.grace_s, self._holds
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.grace_s)
        if self._holds:
            log.warning("shutdown: ending %d request(s) and socket(s) still open", self._holds)
        self.ending.set()
        # A stream ends itself with its terminal frame at once; other requests get half of
        # `end_s` to finish, then are cut off (their middleware answers 503 or ends the body).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.end_s / 2)
        for task in self._running - self._cut:
            self._cut.add(task)
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.end_s / 2)


def current_drain() -> Drain | None:
    """The drain of the server handling the current request (None outside the middleware)."""
    return _current.get()


Refusal = Callable[[Scope, BaseException], Response]


class DrainMiddleware:
    """Refuse new work while draining; end what the drain's `ending` finds still running."""

    def __init__(self, app: ASGIApp, drain: Drain, refuse: Refusal) -> None:
        self.app = app
        self.drain = drain
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        token = _current.set(self.drain)
        try:
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self._http(scope, receive, send)
        finally:
            _current.reset(token)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.drain.draining.is_set():
            await send({"type": "websocket.close", "code": 1001, "reason": "server shutting down"})
            return
        await self.app(scope, receive, send)  # the connection watches the drain itself

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.drain.draining.is_set():
            await self.refuse(scope, ServerShuttingDown())(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        # The request runs in this task (a task of its own per request would cost each one);
        # the drain's ending cancels it here if it runs past half of `end_s`.
        this = asyncio.current_task()
        assert this is not None
        with self.drain.held():
            self.drain.running(this)
            try:
                await self.app(scope, receive, tracked)
                return
            except asyncio.CancelledError:
                if not self.drain.cut_off(this):
                    raise  # cancelled from outside (the connection went): not ours to answer
                this.uncancel()
            finally:
                self.drain.done(this)
        if started:  # nothing more can be said in-band: finish the body so the client sees its end
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await self.refuse(scope, ServerShuttingDown())(scope, receive, send)
