"""What replicas share through Redis (`KIMISERVE_REDIS_URL`): one connection pool, used by the
rate limits (`limits`' Redis storage), by the task bus that wakes `getResponse` waiters on
every replica when a task ends anywhere (pub/sub: no polling on the waiting path), by the
WebSocket session buffers, and by key changes (a key revoked through one replica is forgotten by
every replica's key cache at once)."""

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

from kimiserve.platform.api_keys import ApiKeys

log = logging.getLogger(__name__)

TASK_ENDED_CHANNEL = "kimiserve:task-ended"
SESSION_BUFFERED_CHANNEL = "kimiserve:ws-buffered"
KEY_CHANGED_CHANNEL = "kimiserve:key-changed"


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


async def _announce(shared: SharedRedis, channel: str, message: str) -> None:
    """Publish a notice; a Redis failure is logged, never raised (each notice has a fallback)."""
    try:
        await shared.client.publish(channel, message)
    except aioredis.RedisError:
        log.warning("could not publish to Redis channel %s", channel, exc_info=True)


class _Subscriber:
    """One channel's messages, each handed to `_handle` by a reader task; a failure (a dropped
    connection, a handler's error) is logged and the reading goes on after 0.5 s."""

    channel = ""

    def __init__(self, shared: SharedRedis) -> None:
        self._shared = shared
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._pubsub = self._shared.client.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self.channel)
        self._reader = asyncio.create_task(self._read())

    async def _handle(self, data: str) -> None:
        raise NotImplementedError

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
                if message is None or message.get("type") != "message":
                    continue
                data = message["data"]
                await self._handle(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("Redis notice on %s failed; reading on", self.channel, exc_info=True)
                await asyncio.sleep(0.5)

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._pubsub is not None:
            await self._pubsub.aclose()


class TaskBus(_Subscriber):
    """'Task X ended' notices across replicas. A waiter registers before it re-reads the task, so a
    notice published between its read and its wait is not missed."""

    channel = TASK_ENDED_CHANNEL

    def __init__(self, shared: SharedRedis) -> None:
        super().__init__(shared)
        self._waiters: dict[str, set[asyncio.Event]] = {}

    async def publish(self, task_uuid: str) -> None:
        # Lost, waiters elsewhere still see the row when their wait ends.
        await _announce(self._shared, TASK_ENDED_CHANNEL, task_uuid)

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

    async def _handle(self, data: str) -> None:
        for event in self._waiters.get(data, ()):
            event.set()


async def publish_key_change(shared: SharedRedis, what: str, ident: str) -> None:
    """Announce that a key (`what` "key") or an account's keys ("account") changed. Lost, the
    other replicas' rows still expire within the cache time."""
    await _announce(shared, KEY_CHANGED_CHANNEL, f"{what}:{ident}")


class KeyChanges(_Subscriber):
    """'Key X changed' / 'account Y's keys changed' across replicas, so every replica's key cache
    (ApiKeys) forgets the rows at once instead of within `KIMISERVE_KEY_CACHE_S`."""

    channel = KEY_CHANGED_CHANNEL

    def __init__(self, shared: SharedRedis, keys: ApiKeys) -> None:
        super().__init__(shared)
        self._keys = keys

    async def _handle(self, data: str) -> None:
        what, _, ident = data.partition(":")
        if what == "key":
            self._keys.forget_key(ident)
        elif what == "account":
            self._keys.forget_account(ident)


class SessionBuffers(_Subscriber):
    """WebSocket session buffers shared by replicas: a session's account and the replies buffered
    for it while no socket is attached, in Redis with the session's TTL (counted from the last
    socket leaving), so a client resuming its `connectionSessionUUID` on any replica gets them.
    Pushing announces the session on a channel, so the replica it is attached to now takes them."""

    channel = SESSION_BUFFERED_CHANNEL

    def __init__(self, shared: SharedRedis) -> None:
        super().__init__(shared)
        self._client = shared.client
        self.on_buffered: Any = None  # async callback(session_id), set by the session registry

    @staticmethod
    def _keys(session_id: str) -> tuple[str, str]:
        return f"kimiserve:ws:{session_id}:account", f"kimiserve:ws:{session_id}:buffer"

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

    async def _handle(self, data: str) -> None:
        if self.on_buffered is not None:
            await self.on_buffered(data)
