"""Task ownership across replicas, on SQLite and a real PostgreSQL: two replicas (two engines,
two stores with their own ids) on one database. A sweep ends only tasks whose replica's lease
expired, never a live replica's; a restarted replica ends its own previous run's tasks at once;
holds are released only when their replica is not live."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from kimiserve.domain.ports import Hold, TaskRow
from kimiserve.domain.replicas import Ownership
from kimiserve.domain.tasks import Tasks
from kimiserve.storage.sql.accounts import SqlAccountStore
from kimiserve.storage.sql.database import open_database
from kimiserve.storage.sql.ledger import SqlLedgerStore
from kimiserve.storage.sql.tasks import SqlTaskStore

LEASE_S = 0.4
ERROR = {"code": "taskInterrupted", "message": "m", "parameter": None, "status": 503}


@pytest.fixture
async def engines(database_url: str) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    a = await open_database(database_url)
    b = await open_database(database_url)
    yield a, b
    await a.dispose()
    await b.dispose()


async def test_a_sweep_ends_only_tasks_whose_lease_expired(engines: tuple[AsyncEngine, AsyncEngine]) -> None:
    a = SqlTaskStore(engines[0], "replica-a", LEASE_S)
    b = SqlTaskStore(engines[1], "replica-b", LEASE_S)
    await a.renew_lease()
    await b.renew_lease()
    await a.create("t-a", "acct", "textInference", "async", {"n": 1})
    await b.create("t-b", "acct", "textInference", "async", {"n": 2})
    assert await b.end_abandoned(ERROR, including_own=False) == []
    assert await b.live_replicas() == {"replica-a", "replica-b"}
    for _ in range(3):  # B keeps renewing; A has stopped (as if killed)
        await asyncio.sleep(LEASE_S / 2)
        await b.renew_lease()
    assert await b.live_replicas() == {"replica-b"}
    [ended] = await b.end_abandoned(ERROR, including_own=False)
    assert (ended.task_uuid, ended.request) == ("t-a", {"n": 1})
    row_a, row_b = await b.get("t-a"), await b.get("t-b")
    assert row_a is not None and row_a.status == "error" and row_a.error == ERROR
    assert row_b is not None and row_b.status == "processing"
    assert await a.finish("t-a", results=[{"late": True}]) is False  # the first ending wins
    assert await b.finish("t-b", results=[{"ok": True}]) is True
    assert await b.end_abandoned(ERROR, including_own=False) == []


async def test_a_restarted_replica_ends_its_previous_runs_tasks_at_once(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    before = SqlTaskStore(engines[0], "replica-a", 60.0)
    other = SqlTaskStore(engines[1], "replica-b", 60.0)
    await before.renew_lease()
    await other.renew_lease()
    await before.create("old", "acct", "textInference", "async", {})
    await other.create("theirs", "acct", "textInference", "async", {})
    restarted = SqlTaskStore(engines[0], "replica-a", 60.0)  # same id, leases still valid
    ended = await restarted.end_abandoned(ERROR, including_own=True)
    assert [r.task_uuid for r in ended] == ["old"]
    theirs = await restarted.get("theirs")
    assert theirs is not None and theirs.status == "processing"


async def test_the_sweep_releases_holds_only_of_replicas_that_are_not_live(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    accounts = SqlAccountStore(engines[0])
    await accounts.create_account("acct", "acct", "whsec_x")
    ledger_a, ledger_b = SqlLedgerStore(engines[0], "replica-a"), SqlLedgerStore(engines[1], "replica-b")
    tasks_a = Tasks(SqlTaskStore(engines[0], "replica-a", LEASE_S))
    tasks_b = Tasks(SqlTaskStore(engines[1], "replica-b", LEASE_S))
    interrupted: list[TaskRow] = []

    async def told(row: TaskRow) -> None:
        interrupted.append(row)

    await tasks_a.store.renew_lease()
    sweeper_b = Ownership(tasks_b, ledger_b, "replica-b", LEASE_S, told)
    await sweeper_b.recover()
    await ledger_a.top_up("acct", 1_000, None)
    await ledger_a.reserve([Hold("ha", "acct", "ra", 300)])
    await ledger_b.reserve([Hold("hb", "acct", "rb", 200)])
    await tasks_a.store.create("wt", "acct", "textInference", "webhook", {"webhookURL": "http://x"})
    assert await sweeper_b.sweep() == 0  # A is live: its task and hold are untouched
    account = await accounts.get_account("acct")
    assert account is not None and account.reserved_micros == 500
    await asyncio.sleep(LEASE_S * 1.5)
    await tasks_b.store.renew_lease()
    assert await sweeper_b.sweep() == 1
    assert [r.task_uuid for r in interrupted] == ["wt"]
    account = await accounts.get_account("acct")
    assert account is not None and account.reserved_micros == 200  # B's own hold stays


async def test_the_running_loop_renews_the_lease(engines: tuple[AsyncEngine, AsyncEngine]) -> None:
    store = SqlTaskStore(engines[0], "replica-a", LEASE_S)
    sweeper = Ownership(Tasks(store), SqlLedgerStore(engines[0], "replica-a"), "replica-a", LEASE_S, _ignore)
    await sweeper.recover()
    await store.create("long", "acct", "textInference", "async", {})
    sweeper.start()
    try:
        await asyncio.sleep(LEASE_S * 3)
        other = SqlTaskStore(engines[1], "replica-b", LEASE_S)
        assert await other.end_abandoned(ERROR, including_own=False) == []
        assert "replica-a" in await other.live_replicas()
    finally:
        await sweeper.aclose()


async def _ignore(_row: Any) -> None:
    return None
