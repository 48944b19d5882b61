"""Rate limits shared by replicas through the `limits` library's Redis storage, on a real Redis:
two limiters (two replicas) on one Redis admit, together, no more than the limit, even when the
requests race."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from kimiserve.domain.ports import Limits
from kimiserve.domain.principal import Principal
from kimiserve.errors import RateLimited, ServiceUnavailable
from kimiserve.platform.rate_limits import RateLimiter
from kimiserve.platform.shared_redis import SharedRedis
from tests.dbservers import RedisServer
from tests.serverproc import free_port


async def _admitted(limiters: list[RateLimiter], principal: Principal, n: int) -> int:
    async def one(i: int) -> bool:
        try:
            permit = await limiters[i % len(limiters)].acquire(principal, 1)
        except RateLimited:
            return False
        permit.release()
        return True

    return sum(await asyncio.gather(*(one(i) for i in range(n))))


async def test_two_replicas_on_one_redis_hold_one_limit(redis_server: RedisServer) -> None:
    shared_a, shared_b = SharedRedis(redis_server.url()), SharedRedis(redis_server.url())
    a, b = RateLimiter(shared_a.limits_storage()), RateLimiter(shared_b.limits_storage())
    try:
        await _check_shared(a, b)
    finally:
        await shared_a.aclose()
        await shared_b.aclose()


async def _check_shared(a: RateLimiter, b: RateLimiter) -> None:
    principal = Principal(account_id=str(uuid.uuid4()), key_id=str(uuid.uuid4()), key_limits=Limits(rpm=10))
    assert await _admitted([a, b], principal, 40) == 10
    with pytest.raises(RateLimited) as refused:
        await b.acquire(principal, 1)
    assert refused.value.parameter == "rpm" and refused.value.retry_after_s >= 1
    other = Principal(account_id=str(uuid.uuid4()), key_id=str(uuid.uuid4()), key_limits=Limits(rpm=10))
    assert await _admitted([a, b], other, 3) == 3  # another key's window is its own


async def test_without_redis_each_replica_counts_alone() -> None:
    """The in-process default: what one limiter admitted does not count on another."""
    a, b = RateLimiter(), RateLimiter()
    principal = Principal(account_id="acct", key_id="key", key_limits=Limits(rpm=5))
    assert await _admitted([a], principal, 8) == 5
    assert await _admitted([b], principal, 8) == 5


async def test_an_unreachable_redis_is_a_503_never_an_unchecked_admission() -> None:
    shared = SharedRedis(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        limiter = RateLimiter(shared.limits_storage())
        principal = Principal(account_id="acct", key_id="key", key_limits=Limits(rpm=10))
        with pytest.raises(ServiceUnavailable):
            await limiter.acquire(principal, 1)
    finally:
        await shared.aclose()
