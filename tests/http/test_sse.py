"""The SSE stream helpers on their own: keep-alive while silent, early errors before headers,
and closing, which must close the source even when the source swallows its cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from kimiserve.http.sse import KEEPALIVE, primed, with_keepalive


async def test_keepalive_only_while_the_source_is_silent() -> None:
    async def source() -> AsyncIterator[bytes]:
        yield b"a"
        await asyncio.sleep(0.35)
        for i in range(50):
            yield str(i).encode()

    out = [chunk async for chunk in with_keepalive(source(), 0.1)]
    assert out[0] == b"a" and 2 <= out.count(KEEPALIVE) <= 4
    assert [c for c in out if c != KEEPALIVE] == [b"a", *(str(i).encode() for i in range(50))]
    assert KEEPALIVE not in out[out.index(b"0") :]  # a busy source gets no pings between frames


async def test_primed_raises_an_early_error_and_closes_the_source() -> None:
    closed = asyncio.Event()

    async def source() -> AsyncIterator[bytes]:
        try:
            raise ValueError("prompt too long")
            yield b""
        finally:
            closed.set()

    with pytest.raises(ValueError, match="prompt too long"):
        await primed(source(), 1.0)
    assert closed.is_set()


@pytest.mark.timeout(10)  # the failure this guards against is a hang
async def test_closing_ends_a_source_that_swallows_its_cancellation() -> None:
    ended = asyncio.Event()

    async def stubborn() -> AsyncIterator[bytes]:
        try:
            while True:
                # as a source that turns its cancellation into one last event does:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(10)
                yield b"after cancel"
        finally:
            ended.set()

    stream = with_keepalive(await primed(stubborn(), 0.01), 10)
    reader = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.05)
    reader.cancel()  # the client went away: closing the stream must not wait on the source
    await asyncio.wait_for(asyncio.gather(reader, return_exceptions=True), 2)
    await asyncio.wait_for(stream.aclose(), 2)  # type: ignore[attr-defined]
    assert ended.is_set()
