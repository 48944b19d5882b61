"""getResponse across replicas on a real Redis, on SQLite and PostgreSQL: replica B waits for a
task replica A runs and is woken by A's notice (pub/sub), not by polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from kimiserve.domain.principal import Principal
from kimiserve.domain.tasks import Tasks
from kimiserve.platform.shared_redis import SharedRedis, TaskBus
from kimiserve.storage.sql.database import open_database
from kimiserve.storage.sql.tasks import SqlTaskStore
from tests.dbservers import RedisServer

PRINCIPAL = Principal(account_id="acct", key_id="key")


@pytest.fixture
async def replicas(database_url: str, redis_server: RedisServer) -> AsyncIterator[tuple[Tasks, Tasks]]:
    made = []
    for name in ("a", "b"):
        db = await open_database(database_url)
        shared = SharedRedis(redis_server.url())
        # A poll interval far longer than the test: only the notice can wake B in time.
        tasks = Tasks(SqlTaskStore(db, name), poll_interval_s=30.0)
        tasks.bus = TaskBus(shared)
        await tasks.bus.start()
        made.append((tasks, db, shared))
    yield made[0][0], made[1][0]
    for tasks, db, shared in made:
        await tasks.aclose()
        await shared.aclose()
        await db.dispose()


async def test_a_waiter_on_b_is_woken_when_a_finishes(replicas: tuple[Tasks, Tasks]) -> None:
    a, b = replicas
    await a.begin(PRINCIPAL, "t1", "textInference", "async", {})
    waiting = asyncio.create_task(b.wait(PRINCIPAL, "t1", timeout_s=20))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    finished = time.monotonic()
    await a.complete("t1", [{"text": "done"}])
    row = await waiting
    woke_after = time.monotonic() - finished
    assert row.status == "success" and row.results == [{"text": "done"}]
    assert woke_after < 2.0, woke_after  # the notice woke it: the backstop re-read comes at 5 s


async def test_an_error_and_an_already_finished_task_answer_at_once(replicas: tuple[Tasks, Tasks]) -> None:
    a, b = replicas
    await a.begin(PRINCIPAL, "t2", "textInference", "async", {})
    waiting = asyncio.create_task(b.wait(PRINCIPAL, "t2", timeout_s=20))
    await asyncio.sleep(0.1)
    await a.fail("t2", ValueError("boom"))
    row = await asyncio.wait_for(waiting, 5)
    assert row.status == "error" and row.error is not None
    again = await asyncio.wait_for(b.wait(PRINCIPAL, "t2", timeout_s=20), 5)
    assert again.status == "error"


async def test_a_waiter_times_out_with_the_task_still_processing(replicas: tuple[Tasks, Tasks]) -> None:
    a, b = replicas
    await a.begin(PRINCIPAL, "t3", "textInference", "async", {})
    row = await b.wait(PRINCIPAL, "t3", timeout_s=0.3)
    assert row.status == "processing"
