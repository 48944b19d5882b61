"""Rate limits per key and per account: requests/minute, tokens/minute, concurrent requests.

Requests and tokens per minute are sliding-window counters of the `limits` library (O(1) per
check whatever the count, where a moving window keeps one entry per token; in-memory storage
on one replica, its Redis storage — `SharedRedis.limits_storage()` — shared by several). Concurrency is a
count of the requests this process is running (per replica). A refusal raises `RateLimited`
with `retry_after_s`, and consumes nothing: every window is tested before any is hit. The hit
itself is atomic and refuses past the limit, so requests racing between test and hit (on this
replica or another) are refused too; only then may a window hit before the refusing one have
counted the refused request.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import cast

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, SlidingWindowCounterSupport, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from redis.exceptions import RedisError

from kimiserve.domain.ports import Limits, WindowState
from kimiserve.domain.principal import Principal
from kimiserve.errors import RateLimited, ServiceUnavailable

log = logging.getLogger(__name__)


@dataclass
class Permit:
    """An admitted request: holds its concurrency slots until `release()`."""

    limiter: RateLimiter
    subjects: list[tuple[str, str, Limits]]
    requests: WindowState | None = None
    tokens: WindowState | None = None
    _released: bool = field(default=False, repr=False)

    async def record_tokens(self, tokens: int) -> None:
        """Count tokens produced after admission against the tokens-per-minute windows."""
        await self.limiter.record_tokens(self.subjects, tokens)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.limiter.end(self.subjects)


def _subjects(principal: Principal) -> list[tuple[str, str, Limits]]:
    return [
        ("key", principal.key_id, principal.key_limits),
        ("account", principal.account_id, principal.account_limits),
    ]


class RateLimiter:
    def __init__(self, storage: Storage | None = None, window_s: int = 60) -> None:
        """`window_s`: the window the per-minute limits count over (60; tests shorten it)."""
        self._storage = storage if storage is not None else MemoryStorage()
        self._window = SlidingWindowCounterRateLimiter(self._storage)
        self._window_s = window_s
        self._per = "minute" if window_s == 60 else f"{window_s} s"
        self._running: Counter[tuple[str, str]] = Counter()

    def _item(self, amount: int) -> RateLimitItem:
        return RateLimitItemPerSecond(amount, self._window_s)

    async def acquire(self, principal: Principal, tokens: int) -> Permit:
        """Admit one request expected to use `tokens` (its prompt), or raise RateLimited; when the
        shared storage (Redis) cannot be reached, ServiceUnavailable (503), never admitted unchecked."""
        try:
            return await self._acquire(principal, tokens)
        except (StorageError, RedisError) as exc:
            log.warning("rate-limit storage unavailable: %s", type(exc).__name__)
            raise ServiceUnavailable("Rate limits cannot be checked right now; try again shortly.") from exc

    async def _acquire(self, principal: Principal, tokens: int) -> Permit:
        subjects = _subjects(principal)
        for kind, ident, limits in subjects:
            if limits.concurrency is not None and self._running[(kind, ident)] >= limits.concurrency:
                raise RateLimited(
                    f"Too many concurrent requests for this {kind} (limit {limits.concurrency}).",
                    parameter="concurrency",
                    retry_after_s=1.0,
                )
        checks: list[tuple[str, str, RateLimitItem, int, str]] = []
        for kind, ident, limits in subjects:
            if limits.rpm is not None:
                checks.append((kind, ident, self._item(limits.rpm), 1, "requests"))
            if limits.tpm is not None:
                if tokens > limits.tpm:
                    raise RateLimited(
                        f"The request needs about {tokens} tokens, more than this {kind}'s limit of "
                        f"{limits.tpm} tokens per {self._per}.",
                        parameter="tpm",
                        retry_after_s=float(self._window_s),
                    )
                checks.append((kind, ident, self._item(limits.tpm), tokens, "tokens"))
        for kind, ident, item, cost, what in checks:
            if not await self._window.test(item, kind, ident, what, cost=cost):
                raise RateLimited(
                    f"Rate limit reached for this {kind}: {item.amount} {what} per {self._per}.",
                    parameter="rpm" if what == "requests" else "tpm",
                    retry_after_s=max(1.0, math.ceil(await self._wait_for(item, cost, kind, ident, what))),
                )
        permit = Permit(self, subjects)
        for kind, ident, item, cost, what in checks:
            if not await self._window.hit(item, kind, ident, what, cost=cost):  # lost a race
                raise RateLimited(
                    f"Rate limit reached for this {kind}: {item.amount} {what} per {self._per}.",
                    parameter="rpm" if what == "requests" else "tpm",
                    retry_after_s=1.0,
                )
            stats = await self._window.get_window_stats(item, kind, ident, what)
            state = WindowState(item.amount, stats.remaining, max(0.0, stats.reset_time - time.time()))
            current = permit.requests if what == "requests" else permit.tokens
            if current is None or state.remaining < current.remaining:
                if what == "requests":
                    permit.requests = state
                else:
                    permit.tokens = state
        for kind, ident, _ in subjects:
            self._running[(kind, ident)] += 1
        return permit

    async def _wait_for(self, item: RateLimitItem, cost: int, *ids: str) -> float:
        """Seconds until `cost` more fits the sliding window: the previous window's count weighs
        `previous × (its time left / window)`, so it fades linearly; the current one rolls over
        into the previous at its end and then fades the same way."""
        storage = cast(SlidingWindowCounterSupport, self._storage)
        expiry = item.get_expiry()
        prev, prev_left, cur, cur_ttl = await storage.get_sliding_window(item.key_for(*ids), expiry)
        cur_left = max(0.0, cur_ttl - expiry)  # the current count is kept one window longer, as the previous
        room = item.amount - cost
        if room < 0:
            return float(expiry)
        if cur <= room:
            if prev == 0:
                return 0.0
            return max(0.0, prev_left - (room - cur) * expiry / prev)
        return cur_left + max(0.0, expiry - room * expiry / cur)

    async def record_tokens(self, subjects: list[tuple[str, str, Limits]], tokens: int) -> None:
        try:
            await self._record_tokens(subjects, tokens)
        except (
            StorageError,
            RedisError,
        ):  # after the work is done: the tokens go uncounted, the reply still goes
            log.warning("rate-limit storage unavailable: produced tokens not counted")

    async def _record_tokens(self, subjects: list[tuple[str, str, Limits]], tokens: int) -> None:
        for kind, ident, limits in subjects:
            if limits.tpm is None or tokens <= 0:
                continue
            item = self._item(limits.tpm)
            stats = await self._window.get_window_stats(item, kind, ident, "tokens")
            cost = min(tokens, stats.remaining)  # a window cannot hold more than its limit
            if cost > 0:
                await self._window.hit(item, kind, ident, "tokens", cost=cost)

    def end(self, subjects: list[tuple[str, str, Limits]]) -> None:
        for kind, ident, _ in subjects:
            key = (kind, ident)
            self._running[key] -= 1
            if self._running[key] <= 0:
                del self._running[key]
