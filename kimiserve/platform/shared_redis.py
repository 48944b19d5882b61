"""What replicas share through Redis (`KIMISERVE_REDIS_URL`): one connection pool, used by the
rate limits (`limits`' Redis storage) and by the task bus that wakes `getResponse` waiters on
every replica when a task ends anywhere (pub/sub: no polling on the waiting path)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Iterator
from typing import Any

import redis.asyncio as aioredis
from limits.aio.storage import RedisStorage, Storage

log = logging.getLogger(__name__)

TASK_ENDED_CHANNEL = "kimiserve:task-ended"


class SharedRedis:
    def __init__(self, url: str) -> None:
        self.url = url
        self.pool: aioredis.ConnectionPool = aioredis.ConnectionPool.from_url(url)
        self.client = aioredis.Redis(connection_pool=self.pool)

    def limits_storage(self) -> Storage:
        options: dict[str, Any] = {"connection_pool": self.pool}  # the one pool, closed by aclose()
        return RedisStorage(
            f"async+{self.url}", implementation="redispy", key_prefix="kimiserve-limits", **options
        )

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.pool.disconnect()


class TaskBus:
    """'Task X ended' notices across replicas. A waiter registers before it re-reads the task, so a
    notice published between its read and its wait is not missed."""

    def __init__(self, shared: SharedRedis) -> None:
        self._shared = shared
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._pubsub = self._shared.client.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(TASK_ENDED_CHANNEL)
        self._reader = asyncio.create_task(self._read())

    async def publish(self, task_uuid: str) -> None:
        try:
            await self._shared.client.publish(TASK_ENDED_CHANNEL, task_uuid)
        except aioredis.RedisError:  # waiters elsewhere still see the row when their wait ends
            log.warning("could not publish a task's end to Redis", exc_info=True)

    @contextlib.contextmanager
    def waiting(self, task_uuid: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._waiters.setdefault(task_uuid, set()).add(event)
        try:
            yield event
        finally:
            events = self._waiters.get(task_uuid)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[task_uuid]

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except aioredis.RedisError:
                log.warning("Redis pub/sub dropped; resubscribing", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            if message is None or message.get("type") != "message":
                continue
            data = message["data"]
            task_uuid = data.decode() if isinstance(data, bytes) else str(data)
            for event in self._waiters.get(task_uuid, ()):
                event.set()

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._pubsub is not None:
            await self._pubsub.aclose()


SESSION_BUFFERED_CHANNEL = "kimiserve:ws-buffered"


class SessionBuffers:
    """WebSocket session buffers shared by replicas: a session's account and the replies buffered
    for it while no socket is attached, in Redis with the session's TTL (counted from the last
    socket leaving), so a client resuming its `connectionSessionUUID` on any replica gets them.
    Pushing announces the session on a channel, so the replica it is attached to now takes them."""

    def __init__(self, shared: SharedRedis) -> None:
        self._client = shared.client
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self.on_buffered: Any = None  # async callback(session_id), set by the session registry

    @staticmethod
    def _keys(session_id: str) -> tuple[str, str]:
        return f"kimiserve:ws:{session_id}:account", f"kimiserve:ws:{session_id}:buffer"

    async def start(self) -> None:
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(SESSION_BUFFERED_CHANNEL)
        self._reader = asyncio.create_task(self._read())

    async def account_of(self, session_id: str) -> str | None:
        value = await self._client.get(self._keys(session_id)[0])
        return value.decode() if isinstance(value, bytes) else value

    async def attached(self, session_id: str, account_id: str) -> list[dict[str, Any]]:
        """A socket attached: the session lives while it does; returns (and clears) its buffer."""
        account, buffer = self._keys(session_id)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(account, account_id)
            pipe.lrange(buffer, 0, -1)
            pipe.delete(buffer)
            _, items, _ = await pipe.execute()
        return [json.loads(item) for item in items]

    async def detached(self, session_id: str, ttl_s: float) -> None:
        account, buffer = self._keys(session_id)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.expire(account, max(1, math.ceil(ttl_s)))
            pipe.expire(buffer, max(1, math.ceil(ttl_s)))
            await pipe.execute()

    async def push(self, session_id: str, messages: list[dict[str, Any]], ttl_s: float, limit: int) -> None:
        account, buffer = self._keys(session_id)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.rpush(buffer, *(json.dumps(m) for m in messages))
            pipe.ltrim(buffer, -limit, -1)  # the oldest go first, as in the in-process buffer
            if await self._client.ttl(account) != -1:  # not attached anywhere: expires with the session
                pipe.expire(buffer, max(1, math.ceil(ttl_s)))
            pipe.publish(SESSION_BUFFERED_CHANNEL, session_id)
            await pipe.execute()

    async def take(self, session_id: str) -> list[dict[str, Any]]:
        buffer = self._keys(session_id)[1]
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.lrange(buffer, 0, -1)
            pipe.delete(buffer)
            items, _ = await pipe.execute()
        return [json.loads(item) for item in items]

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
                if message is None or message.get("type") != "message" or self.on_buffered is None:
                    continue
                data = message["data"]
                await self.on_buffered(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("session buffer notice failed", exc_info=True)
                await asyncio.sleep(0.5)

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._pubsub is not None:
            await self._pubsub.aclose()
