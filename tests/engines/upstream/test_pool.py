"""PoolEngine over three stand-in vLLM processes: affinity, failover, ejection and re-admission."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import pytest

from kimiserve.domain.types import Finished, GenerationRequest, Message, TextDelta
from kimiserve.engines.openai_compat import PoolEngine, UpstreamEngine
from kimiserve.errors import EngineError
from tests.engines.upstream.conftest import ask, collect, config
from tests.standin.process import StandinProcess


@pytest.fixture
def replicas() -> Iterator[list[StandinProcess]]:
    procs = [StandinProcess(f"r{i}").start() for i in range(3)]
    yield procs
    for proc in procs:
        proc.stop()


@pytest.fixture
async def pool(replicas: list[StandinProcess]) -> AsyncIterator[PoolEngine]:
    engines = [UpstreamEngine(config(p.url, max_concurrency=32)) for p in replicas]
    engine = PoolEngine("kimi-k2.6", engines, cooldown_s=30.0, probe_interval_s=0.2)
    yield engine
    await engine.aclose()


def served_by(replicas: list[StandinProcess], field: str) -> dict[str, set[str]]:
    """For each value of `field` in the bodies, the replicas that received it."""
    out: dict[str, set[str]] = {}
    for proc in replicas:
        stats = proc.stats()
        for body in stats["requests"]:
            value = body.get(field) or body["messages"][0]["content"]
            out.setdefault(str(value), set()).add(stats["name"])
    return out


async def test_prompt_cache_key_pins_each_conversation_to_one_replica(
    pool: PoolEngine, replicas: list[StandinProcess]
) -> None:
    requests = [ask(f"turn {i}", prompt_cache_key=f"conv-{i % 10}", cache_scope="acct") for i in range(100)]
    sem = asyncio.Semaphore(16)

    async def one(request: GenerationRequest) -> None:
        async with sem:
            events = await collect(pool.generate(request))
            assert events[-1] == Finished("stop")

    await asyncio.gather(*(one(r) for r in requests))
    placement = served_by(replicas, "prompt_cache_key")
    assert len(placement) == 10
    assert all(len(names) == 1 for names in placement.values()), placement
    assert len(set().union(*placement.values())) >= 2  # the keys spread over the replicas


async def test_without_a_key_the_leading_messages_decide(
    pool: PoolEngine, replicas: list[StandinProcess]
) -> None:
    """Each conversation (system + first user message) stays on one replica as it grows."""
    for turn in range(4):
        for conv in range(8):
            history: tuple[Message, ...] = (
                Message("system", f"persona {conv}"),
                Message("user", f"start {conv}"),
            )
            for t in range(turn):
                history += (Message("assistant", f"answer {t}"), Message("user", f"more {t}"))
            await collect(pool.generate(GenerationRequest("k", history)))
    placement = served_by(replicas, "no-such-field")  # keyed by the first message
    assert len(placement) == 8 and all(len(names) == 1 for names in placement.values()), placement


async def test_killed_replica_fails_over_is_ejected_and_readmitted(
    pool: PoolEngine, replicas: list[StandinProcess]
) -> None:
    # A stream running on the replica that dies ends with a clean error, promptly.
    words = " ".join(f"w{i}" for i in range(200))
    stream = pool.generate(ask(f"{words} #slow", prompt_cache_key="long"))
    first = await anext(stream)
    assert isinstance(first, TextDelta)
    victim = next(r for r in pool.replicas if r.outstanding == 1)
    proc = next(p for p in replicas if p.url == victim.label)
    proc.stop()
    started = time.monotonic()
    with pytest.raises(EngineError) as caught:
        async for _ in stream:
            pass
    assert time.monotonic() - started < 5 and caught.value.status == 502
    assert victim.ejected_until > time.monotonic()

    # Requests not yet started all succeed on the others, whatever their key.
    results = await asyncio.gather(
        *(collect(pool.generate(ask(f"hello {i}", prompt_cache_key=f"k{i}"))) for i in range(30))
    )
    assert all(events[-1] == Finished("stop") for events in results)

    # Back on the same port: the probe re-admits it well before the 30 s cool-down ends.
    revived = StandinProcess(proc.name, port=proc.port).start()
    replicas[replicas.index(proc)] = revived
    deadline = time.monotonic() + 5
    while victim.ejected_until > time.monotonic():
        assert time.monotonic() < deadline, "the replica was not re-admitted"
        await asyncio.sleep(0.1)
    await asyncio.gather(
        *(collect(pool.generate(ask(f"again {i}", prompt_cache_key=f"k{i}"))) for i in range(30))
    )
    assert len(revived.stats()["requests"]) > 0


async def test_a_request_refused_before_its_first_token_is_retried_elsewhere(
    pool: PoolEngine, replicas: list[StandinProcess]
) -> None:
    replicas[0].stop()
    replicas[1].stop()
    for i in range(10):  # whichever replica the key prefers, the request lands on the live one
        events = await collect(pool.generate(ask(f"hi {i}", prompt_cache_key=f"x{i}")))
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == f"hi {i}"
    assert len(replicas[2].stats()["requests"]) == 10
    health = await pool.health()
    assert health.ok and health.detail.startswith("1/3")


async def test_least_outstanding_spills_over_a_busy_preferred_replica(replicas: list[StandinProcess]) -> None:
    engines = [UpstreamEngine(config(p.url, max_concurrency=2)) for p in replicas]
    pool = PoolEngine("kimi-k2.6", engines)
    try:
        words = " ".join(f"w{i}" for i in range(10))
        streams = [pool.generate(ask(f"{words} #slow", prompt_cache_key="same")) for _ in range(6)]
        await asyncio.gather(*(anext(s) for s in streams))  # all six running at once
        assert Counter(r.outstanding for r in pool.replicas) == Counter({2: 3})  # caps respected
        for s in streams:
            await s.aclose()
    finally:
        await pool.aclose()
