"""A streamed HTTP response whose client stops reading is cut, as if the client had left.

uvicorn applies backpressure by making `send` wait: once the kernel's socket buffers and the
transport's own (64 KiB) are full, each `send` waits at its start until the client reads. A
stream's generator is not pulled meanwhile, so its generations stay admitted (their rate-limit
permit, their place in the engine's queue, their credit hold, an upstream connection) for as
long as the client does not read, even after the engine has finished producing.

`StallGuard` bounds that wait: a body `send` of a streamed response (one that sent a chunk with
`more_body`) that has not completed after `timeout_s` ends the response: the streams registered
with `close_on_cut` (every SSE stream: `http.sse.with_keepalive`) are closed there and then, as
when a client leaves, so their generations are charged for what they produced (usage rows
`disconnected`) and their permits and places are freed; and the next `receive` (the one
Starlette's `StreamingResponse` waits on) answers `http.disconnect`, which ends the
response. What was not sent is dropped; uvicorn then closes the connection (it logs that the
response was not completed). A response sent in one body message is never timed: it
cannot wait on a client that has read nothing of it yet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from contextvars import ContextVar
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

DISCONNECT: Message = {"type": "http.disconnect"}


class ClientStalled(OSError):
    """A send to a client that does not read, after the response was cut (OSError: what an
    ASGI server raises for a client that is gone)."""


def close_on_cut(stream: AsyncGenerator[Any, None]) -> None:
    """Close `stream` (a response body suspended at its `yield`) if the response being served is
    cut; outside a `StallGuard` nothing happens."""
    exchange = _current.get()
    if exchange is not None:
        exchange.closers.append(stream)


class StallGuard:
    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await _Exchange(self.timeout_s, receive, send).run(self.app, scope)


class _Exchange:
    """One request's sends and receives, watched for a client that stopped reading."""

    def __init__(self, timeout_s: float, receive: Receive, send: Send) -> None:
        self._timeout_s = timeout_s
        self._receive = receive
        self._send = send
        self._streaming = False  # a body chunk with more_body was sent
        self._body_read = False  # the request's last body message was received
        self._cut = False
        self._wake: asyncio.Future[None] | None = None  # a disconnect watch waiting on the cut
        self.closers: list[AsyncGenerator[Any, None]] = []  # closed at the cut

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        token = _current.set(self)
        try:
            await app(scope, self.receive, self.send)
        except ClientStalled:
            pass  # the response was cut: nothing more can reach this client
        finally:
            _current.reset(token)

    async def send(self, message: Message) -> None:
        if self._cut:
            await self._refuse()
        if message["type"] != "http.response.body":
            await self._send(message)
            return
        if not self._streaming:
            self._streaming = bool(message.get("more_body", False))
            if not self._streaming:
                await self._send(message)  # the whole body at once: nothing to wait on yet
                return
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._send(message)  # waits at its start while the transport is full
        except TimeoutError:
            log.warning("stream cut: its client read nothing for %.0f s", self._timeout_s)
            self._cut = True
            for stream in self.closers:  # suspended at the yield that gave this chunk
                await stream.aclose()
            if self._wake is not None and not self._wake.done():
                self._wake.set_result(None)  # then the response's disconnect watch ends it
            await self._refuse()

    async def _refuse(self) -> None:
        """Give the response's disconnect watch (woken by the cut) time to cancel the stream;
        should none be watching, the send fails as one to a client that is gone."""
        await asyncio.sleep(1.0)
        raise ClientStalled("The client stopped reading; the response was cut.")

    async def receive(self) -> Message:
        if not self._body_read:
            message = await self._receive()
            self._body_read = message["type"] != "http.request" or not message.get("more_body", False)
            return message
        # After the body, a receive only waits for the client to leave: the cut ends it too.
        if self._cut:
            return DISCONNECT
        self._wake = asyncio.get_running_loop().create_future()
        real = asyncio.ensure_future(self._receive())
        try:
            await asyncio.wait((real, self._wake), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not real.done():
                real.cancel()
            self._wake = None
        return real.result() if real.done() and not real.cancelled() else DISCONNECT


_current: ContextVar[_Exchange | None] = ContextVar("kimiserve_stall_exchange", default=None)
