"""Server-sent events: frames, and a keep-alive that speaks while the source is silent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, TypeVar

T = TypeVar("T")

KEEPALIVE = b": ping\n\n"


def frame(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
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


async def primed(source: AsyncIterator[T], timeout_s: float) -> AsyncIterator[T]:
    """Wait up to `timeout_s` for the source's first item, so early errors (a prompt too long,
    a bad grammar) raise here, before response headers are sent; then the same stream."""
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
                yield await first
            except StopAsyncIteration:
                return
            async for item in source:
                yield item
        finally:
            first.cancel()
            await source.aclose()  # type: ignore[attr-defined]

    return rest()
