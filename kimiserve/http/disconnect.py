"""A non-streamed reply's work, cancelled when its client leaves first (every protocol's)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")

CLIENT_CLOSED = 499  # nginx's "client closed request": the status counted, never sent


class ClientDisconnected(Exception):
    """The client left before a non-streamed reply was ready."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work` in this task, cancelled if the client disconnects first (the body is already
    read): one watcher task beside it."""
    this = asyncio.current_task()
    assert this is not None
    left = False

    async def watch() -> None:
        nonlocal left
        while (await request.receive())["type"] != "http.disconnect":
            pass
        left = True
        this.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if left and this.uncancel() == 0:  # our own cancellation, not one from outside
            raise ClientDisconnected from None
        raise
    finally:
        watcher.cancel()
