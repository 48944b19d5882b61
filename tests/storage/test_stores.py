"""The other stores' contract on SQLite and a real PostgreSQL: accounts and keys, tasks, media
records and usage rows behave the same on both."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from kimiserve.domain.ports import Hold, Limits, MediaRow, TaskExists, UsageRow
from kimiserve.storage.sql.accounts import SqlAccountStore
from kimiserve.storage.sql.database import open_database
from kimiserve.storage.sql.ledger import SqlLedgerStore
from kimiserve.storage.sql.media import SqlMediaStore
from kimiserve.storage.sql.tasks import SqlTaskStore
from kimiserve.storage.sql.usage import SqlUsageStore


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await open_database(database_url)
    yield engine
    await engine.dispose()


async def test_accounts_and_keys(db: AsyncEngine) -> None:
    store = SqlAccountStore(db)
    await store.create_account("a1", "acme", "whsec_1")
    assert (await store.find_account_by_name("acme")) == await store.get_account("a1")
    assert await store.get_account("nope") is None
    assert await store.set_account_limits("a1", Limits(rpm=5, tpm=None, concurrency=2))
    await store.create_key(
        "k1",
        "a1",
        "ci",
        "h" * 64,
        scopes=frozenset({"inference"}),
        models=("kimi-k2.6",),
        limits=Limits(tpm=99),
    )
    key = await store.get_key("k1")
    assert key is not None and key.scopes == frozenset({"inference"}) and key.models == ("kimi-k2.6",)
    assert key.limits == Limits(tpm=99) and key.account_limits == Limits(rpm=5, concurrency=2)
    assert await store.revoke_key("k1") and not await store.revoke_key("k1")
    revoked = await store.get_key("k1")
    assert revoked is not None and revoked.revoked
    assert [k.id for k in await store.list_keys("a1")] == ["k1"]


async def test_tasks(db: AsyncEngine) -> None:
    store = SqlTaskStore(db, "replica-x", 30.0)
    await store.create("t1", "a1", "textInference", "sync", {"prompt": "é ✓"})
    with pytest.raises(TaskExists):
        await store.create("t1", "a1", "textInference", "sync", {})
    assert await store.finish("t1", results=[{"text": "ok", "cost": 0.000123}])
    assert not await store.finish("t1", error={"code": "late"})
    row = await store.get("t1")
    assert row is not None and row.status == "success" and row.request == {"prompt": "é ✓"}
    assert row.results == [{"text": "ok", "cost": 0.000123}] and row.error is None
    assert await store.get("t2") is None
    assert await store.count() == 1


async def test_media_and_usage(db: AsyncEngine) -> None:
    media = SqlMediaStore(db)
    await media.add(MediaRow("m1", "a1", "image/png", 3_000_000_000, "f" * 64))  # over 2**31 bytes
    assert await media.get("m1") == MediaRow("m1", "a1", "image/png", 3_000_000_000, "f" * 64)
    accounts = SqlAccountStore(db)
    await accounts.create_account("a1", "acme", "whsec_1")
    ledger = SqlLedgerStore(db, "replica-x")
    await ledger.top_up("a1", 10**12, None)  # a million dollars in micro-USD: exact in BIGINT
    hold = Hold("h1", "a1", "r1", 5_000_000)
    await ledger.reserve([hold])
    row = UsageRow("a1", "k1", "r1", "runware", "kimi-k2.6", 100, 50, 10, 5, 1_234_567, "completed")
    await ledger.settle(hold, row)
    assert await SqlUsageStore(db).for_account("a1") == [row]
    account = await accounts.get_account("a1")
    assert account is not None and account.balance_micros == 10**12 - 1_234_567
