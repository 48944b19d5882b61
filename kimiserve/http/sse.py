"""Server-sent events: frames, a keep-alive that speaks while the source is silent, and streams
that end with their protocol's terminal frame when the server shuts down.

Frames are encoded by `http.encoding`, so no text in them can fail to encode. A stream that
`primed` returned, still open when a shutdown reaches its `ending` phase, raises
`ServerShuttingDown` from its next item: the renderer turns that into its protocol's in-band
error frame, the way it does any other failure after the headers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from kimiserve.http.encoding import dumps
from kimiserve.http.shutdown import Drain, ServerShuttingDown, current_drain, until_ending

T = TypeVar("T")

KEEPALIVE = b": ping\n\n"


def frame(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else dumps(payload)
    return f"data: {data}\n\n".encode()


async def with_keepalive(source: AsyncIterator[bytes], interval_s: float) -> AsyncIterator[bytes]:
    """Yield the source's frames, and a comment line whenever it is silent for `interval_s`.

    Closing this generator closes the source (so a client disconnect cancels generation).
    """
    pending: asyncio.Task[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({pending}, timeout=interval_s)
            if not done:
                yield KEEPALIVE
                continue
            task, pending = pending, None
            try:
                chunk = task.result()
            except StopAsyncIteration:
                return
            yield chunk
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        await source.aclose()  # type: ignore[attr-defined]


async def _next_or_shutdown(item: asyncio.Future[T], drain: Drain | None) -> T:
    """The item, unless the server's shutdown reaches `ending` first (or we are cancelled)."""
    if drain is None:
        return await item  # cancelling this await cancels the item too
    try:
        arrived = await until_ending(drain, item)
    except BaseException:
        item.cancel()
        await asyncio.gather(item, return_exceptions=True)
        raise
    if not arrived:
        item.cancel()
        await asyncio.gather(item, return_exceptions=True)
        raise ServerShuttingDown
    return item.result()


async def primed(source: AsyncIterator[T], timeout_s: float) -> AsyncIterator[T]:
    """Wait up to `timeout_s` for the source's first item, so early errors (a prompt too long,
    a bad grammar) raise here, before response headers are sent; then the same stream."""
    drain = current_drain()
    first = asyncio.ensure_future(anext(source))
    done, _ = await asyncio.wait({first}, timeout=timeout_s)
    if done and first.exception() is not None:
        await source.aclose()  # type: ignore[attr-defined]
        exc = first.exception()
        assert exc is not None
        if not isinstance(exc, StopAsyncIteration):
            raise exc

    async def rest() -> AsyncIterator[T]:
        try:
            try:
                yield await _next_or_shutdown(first, drain)
            except StopAsyncIteration:
                return
            while True:
                try:
                    item = await _next_or_shutdown(asyncio.ensure_future(anext(source)), drain)
                except StopAsyncIteration:
                    return
                yield item
        finally:
            first.cancel()
            await source.aclose()  # type: ignore[attr-defined]

    return rest()
