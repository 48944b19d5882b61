"""Server-sent events: frames, a keep-alive that speaks while the source is silent, and streams
that end with their protocol's terminal frame when the server shuts down.

Frames are encoded by `http.encoding`, so no text in them can fail to encode. A stream that
`primed` returned, still open when a shutdown reaches its `ending` phase, raises
`ServerShuttingDown` from its next item: the renderer turns that into its protocol's in-band
error frame, the way it does any other failure after the headers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kimiserve.http.encoding import dumps
from kimiserve.http.shutdown import ServerShuttingDown, current_drain
from kimiserve.http.stall import close_on_cut

T = TypeVar("T")

KEEPALIVE = b": ping\n\n"


@dataclass
class StreamStatus:
    """How a stream ended, for the metrics: `success`, an error code, or the client leaving (the
    renderer sets it; `counted` reports it when the stream ends)."""

    status: str = "clientDisconnected"


async def counted(
    frames: AsyncGenerator[bytes, None], report: Callable[[str], None], status: StreamStatus
) -> AsyncGenerator[bytes, None]:
    """The frames; when they end, or the client leaves, `report(status.status)` once."""
    try:
        async with contextlib.aclosing(frames):
            async for data in frames:
                yield data
    finally:
        report(status.status)


def frame(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else dumps(payload)
    return f"data: {data}\n\n".encode()


class _Pump(Generic[T]):
    """One task that reads `source` ahead (at most `ahead` items), for a reader that waits on
    the items and on other news (a keep-alive timer, the server's shutdown) alike: a future per
    wait, no task per item. Closing the pump cancels the task, which closes the source where it
    waits (so a client disconnect cancels generation)."""

    def __init__(self, source: AsyncIterator[T], ahead: int = 8) -> None:
        self._source = source
        self._ahead = ahead
        self._items: deque[T] = deque()
        self._end: BaseException | None = None  # StopAsyncIteration() or the source's error
        self._wake: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self._closing = False
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for item in self._source:
                if self._closing:
                    break  # the source swallowed the cancellation and went on: it is not wanted
                self._items.append(item)
                self.poke()
                if len(self._items) >= self._ahead:
                    self._room = self._loop.create_future()
                    await self._room
        except BaseException as exc:  # the reader gets it (a cancellation too: it ends the source)
            self._end = exc
        else:
            self._end = StopAsyncIteration()
        self.poke()

    @property
    def ready(self) -> bool:
        """An item, or the end, is there to `take`."""
        return bool(self._items) or self._end is not None

    @property
    def failed(self) -> BaseException | None:
        """The source's error, when it ended with one and every item before it was taken."""
        if self._items or isinstance(self._end, StopAsyncIteration):
            return None
        return self._end

    def take(self) -> T:
        """The next item; raises the source's end (StopAsyncIteration or its error) after the last."""
        if self._items:
            item = self._items.popleft()
            if self._room is not None and not self._room.done():
                self._room.set_result(None)
            return item
        assert self._end is not None, "take() before ready"
        raise self._end

    def poke(self) -> None:
        """Wake the reader's `wait` (something else it waits for has happened)."""
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def wait(self) -> None:
        """Until `ready`, or a `poke`."""
        if self.ready:
            return
        self._wake = self._loop.create_future()
        try:
            await self._wake
        finally:
            self._wake = None

    async def aclose(self) -> None:
        self._closing = True
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._source.aclose()  # type: ignore[attr-defined]


def with_keepalive(
    source: AsyncIterator[bytes], interval_s: float, keepalive: bytes = KEEPALIVE
) -> AsyncIterator[bytes]:
    """Yield the source's frames, and `keepalive` (a comment line unless the protocol has its own,
    Anthropic's `ping` event) whenever it is silent for `interval_s`.

    One reader task and one timer per stream (re-armed when it fires, not per frame).
    Closing this generator closes the source (so a client disconnect cancels generation); so
    does a client that stops reading, once its response is cut (`http.stall`).
    """
    stream = _with_keepalive(source, interval_s, keepalive)
    close_on_cut(stream)
    return stream


async def _with_keepalive(
    source: AsyncIterator[bytes], interval_s: float, keepalive: bytes
) -> AsyncGenerator[bytes, None]:
    loop = asyncio.get_running_loop()
    pump = _Pump(source)
    last = loop.time()  # when the client was last sent something
    due = False
    timer: asyncio.TimerHandle

    def tick() -> None:
        nonlocal timer, due
        now = loop.time()
        if now - last >= interval_s:
            due = True
            pump.poke()
            timer = loop.call_at(now + interval_s, tick)
        else:
            timer = loop.call_at(last + interval_s, tick)

    timer = loop.call_at(last + interval_s, tick)
    try:
        while True:
            await pump.wait()
            if pump.ready:
                try:
                    chunk = pump.take()
                except StopAsyncIteration:
                    return
                last = loop.time()
                yield chunk
            elif due:
                due = False
                last = loop.time()
                yield keepalive
    finally:
        timer.cancel()
        await pump.aclose()


async def primed(source: AsyncIterator[T], timeout_s: float) -> AsyncIterator[T]:
    """Wait up to `timeout_s` for the source's first item, so early errors (a prompt too long,
    a bad grammar) raise here, before response headers are sent; then the same stream.

    The stream raises `ServerShuttingDown` from its next item once the server's shutdown
    reaches `ending` (one watcher per stream, not a task per item)."""
    drain = current_drain()
    pump = _Pump(source)
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await pump.wait()
    except BaseException:
        await pump.aclose()
        raise
    if (error := pump.failed) is not None:
        await pump.aclose()
        if not isinstance(error, asyncio.CancelledError):
            raise error
        raise asyncio.CancelledError

    async def rest() -> AsyncIterator[T]:
        ending: asyncio.Future[Any] | None = None
        if drain is not None and not drain.ending.is_set():
            ending = asyncio.ensure_future(drain.ending.wait())
            ending.add_done_callback(lambda _: pump.poke())
        try:
            while True:
                await pump.wait()
                if drain is not None and drain.ending.is_set():
                    raise ServerShuttingDown
                if pump.ready:
                    try:
                        item = pump.take()
                    except StopAsyncIteration:
                        return
                    yield item
        finally:
            if ending is not None:
                ending.cancel()
            await pump.aclose()

    return rest()
