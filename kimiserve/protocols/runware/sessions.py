"""WebSocket sessions: what outlives one socket, so `connectionSessionUUID` can resume.

A session belongs to one account. Tasks started over a socket deliver their replies to the
session, not the socket: while a socket is attached the reply goes to it; while none is (the
client dropped, or is reconnecting), replies are buffered, for `ttl_s` after the last socket
left. A socket that authenticates with that session's id within the window gets the buffer.
The registry also owns the tasks the sockets started (they keep running when a socket goes,
so their results can be buffered or fetched with getResponse), and cancels them at shutdown.

With `buffers` (replicas sharing a Redis), the buffer of a detached session lives in Redis
instead, with the same TTL, so a socket resuming the session on another replica gets it; a reply
buffered there while the session is attached on another replica is passed on by that replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

Message = dict[str, Any]


class Outlet(Protocol):
    """A live socket, as a session sees it."""

    async def offer(self, message: Message) -> bool:
        """Queue a message for sending; False when the socket cannot take it (closed or stuck)."""
        ...


@dataclass
class Session:
    id: str
    account_id: str
    buffer: deque[Message]
    outlet: Outlet | None = None
    detached_at: float | None = None
    dropped: int = field(default=0)


class SharedBuffers(Protocol):
    """Session buffers shared by replicas (`platform/shared_redis.SessionBuffers`)."""

    on_buffered: Any

    async def account_of(self, session_id: str) -> str | None: ...
    async def attached(self, session_id: str, account_id: str) -> list[Message]: ...
    async def detached(self, session_id: str, ttl_s: float) -> None: ...
    async def push(self, session_id: str, messages: list[Message], ttl_s: float, limit: int) -> None: ...
    async def take(self, session_id: str) -> list[Message]: ...


class SessionRegistry:
    def __init__(
        self,
        ttl_s: float,
        max_buffered: int,
        clock: Callable[[], float] = time.monotonic,
        buffers: SharedBuffers | None = None,
    ) -> None:
        self._ttl_s = ttl_s
        self._max_buffered = max_buffered
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._buffers = buffers
        if buffers is not None:
            buffers.on_buffered = self._buffered_elsewhere

    async def adopt(self, account_id: str, requested: str | None) -> None:
        """Before `open`: a session another replica served (known to the shared buffers, this
        account's) becomes known here under its id, so `open` resumes it."""
        if self._buffers is None or not requested or requested in self._sessions:
            return
        if await self._buffers.account_of(requested) == account_id:
            self._sessions[requested] = Session(requested, account_id, deque(maxlen=self._max_buffered))

    async def attached(self, session: Session) -> list[Message]:
        """After `attach`: what the shared buffers held for the session (now cleared)."""
        if self._buffers is None:
            return []
        return await self._buffers.attached(session.id, session.account_id)

    async def _buffered_elsewhere(self, session_id: str) -> None:
        session = self._sessions.get(session_id)
        if session is None or session.outlet is None or self._buffers is None:
            return
        for message in await self._buffers.take(session_id):
            await self.deliver(session, message)

    def open(self, account_id: str, requested: str | None) -> Session:
        """The session to resume, or a new one when the id is unknown, expired or not this account's."""
        self._sweep()
        session = self._sessions.get(requested) if requested else None
        if session is not None and session.account_id == account_id:
            return session
        session = Session(str(uuid.uuid4()), account_id, deque(maxlen=self._max_buffered))
        self._sessions[session.id] = session
        return session

    def attach(self, session: Session, outlet: Outlet) -> list[Message]:
        """Make `outlet` the session's socket; returns what was buffered meanwhile (now cleared)."""
        session.outlet = outlet
        session.detached_at = None
        buffered = list(session.buffer)
        session.buffer.clear()
        return buffered

    def detach(self, session: Session, outlet: Outlet, unsent: list[Message]) -> None:
        """The socket left; what it had not sent yet is kept for a resume."""
        if session.outlet is outlet:
            session.outlet = None
            session.detached_at = self._clock()
        if self._buffers is not None:
            self.spawn(self._detached_shared(session, list(unsent)))
        else:
            for message in unsent:
                self._keep(session, message)
        self._sweep()

    async def _detached_shared(self, session: Session, unsent: list[Message]) -> None:
        assert self._buffers is not None
        if unsent:
            await self._buffers.push(session.id, unsent, self._ttl_s, self._max_buffered)
        if session.outlet is None:
            await self._buffers.detached(session.id, self._ttl_s)

    async def deliver(self, session: Session, message: Message) -> None:
        outlet = session.outlet
        if outlet is not None and await outlet.offer(message):
            return
        if self._buffers is not None:
            await self._buffers.push(session.id, [message], self._ttl_s, self._max_buffered)
        elif session.id in self._sessions:
            self._keep(session, message)

    def _keep(self, session: Session, message: Message) -> None:
        if len(session.buffer) == session.buffer.maxlen:
            session.dropped += 1
            log.warning("session %s buffer full: oldest reply dropped (getResponse still has it)", session.id)
        session.buffer.append(message)

    def _sweep(self) -> None:
        now = self._clock()
        for sid, session in list(self._sessions.items()):
            if (
                session.outlet is None
                and session.detached_at is not None
                and now - session.detached_at > self._ttl_s
            ):
                del self._sessions[sid]

    def get(self, session_id: str) -> Session | None:
        self._sweep()
        return self._sessions.get(session_id)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._sessions.clear()
