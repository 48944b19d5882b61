"""The ledger's contract, for every implementation: SqlLedgerStore on SQLite and on a real
PostgreSQL (through asyncpg), and SqliteLedgerStore (the embedded default's fast path)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kimiserve.domain.ports import Hold, InsufficientBalance, LedgerStore, UsageRow
from kimiserve.storage.sql.accounts import SqlAccountStore
from kimiserve.storage.sql.database import open_database
from kimiserve.storage.sql.ledger import SqlLedgerStore
from kimiserve.storage.sql.sqlite_ledger import SqliteLedgerStore
from tests.dbservers import PostgresServer


@pytest.fixture(params=["sqlalchemy", "sqlite", "postgresql"])
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[LedgerStore, SqlAccountStore]]:
    path = tmp_path / "ledger.db"
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        db = await open_database(server.create_database())
    else:
        db = await open_database(f"sqlite+aiosqlite:///{path}")
    accounts = SqlAccountStore(db)
    await accounts.create_account("acct", "acct", "whsec_x")
    sqlite = SqliteLedgerStore(str(path)) if request.param == "sqlite" else None
    try:
        yield (sqlite if sqlite is not None else SqlLedgerStore(db)), accounts
    finally:
        if sqlite is not None:
            await sqlite.aclose()
        await db.dispose()


def usage(cost: int, outcome: str = "completed") -> UsageRow:
    return UsageRow("acct", "key", "req", "runware", "m", 10, 5, 0, 0, cost, outcome)


async def test_holds_settle_release_and_the_entries_add_up(
    stores: tuple[LedgerStore, SqlAccountStore],
) -> None:
    ledger, accounts = stores
    assert await ledger.top_up("acct", 1_000, "first") == 1_000
    a, b, c = (Hold(f"h{i}", "acct", "req", 300) for i in range(3))
    await ledger.reserve([a, b, c])
    with pytest.raises(InsufficientBalance):  # 100 left to hold
        await ledger.reserve([Hold("h3", "acct", "req", 101)])
    await ledger.settle(a, usage(120))
    await ledger.settle(b, usage(50, "disconnected"))
    await ledger.release(c)
    account = await accounts.get_account("acct")
    assert account is not None
    assert (account.balance_micros, account.reserved_micros) == (1_000 - 170, 0)
    entries = await ledger.entries("acct")
    assert sum(e.amount_micros for e in entries) == account.balance_micros
    assert sum(e.hold_micros for e in entries) == 0
    assert [e.kind for e in entries] == [
        "topup",
        "reservation",
        "reservation",
        "reservation",
        "settlement",
        "settlement",
        "release",
    ]


async def test_concurrent_holds_never_exceed_the_balance(stores: tuple[LedgerStore, SqlAccountStore]) -> None:
    ledger, accounts = stores
    await ledger.top_up("acct", 1_000, None)

    async def take(i: int) -> bool:
        try:
            await ledger.reserve([Hold(f"c{i}", "acct", "req", 100)])
        except InsufficientBalance:
            return False
        return True

    taken = await asyncio.gather(*(take(i) for i in range(40)))
    assert sum(taken) == 10
    account = await accounts.get_account("acct")
    assert account is not None and account.reserved_micros == 1_000


async def test_a_restart_releases_what_a_crash_left_held(stores: tuple[LedgerStore, SqlAccountStore]) -> None:
    ledger, accounts = stores
    await ledger.top_up("acct", 1_000, None)
    await ledger.reserve([Hold("left", "acct", "req", 400), Hold("also", "acct", "req", 200)])
    await ledger.settle(Hold("also", "acct", "req", 200), usage(10))
    assert await ledger.release_all_held() == 1
    assert await ledger.release_all_held() == 0
    account = await accounts.get_account("acct")
    assert account is not None and (account.balance_micros, account.reserved_micros) == (990, 0)


async def test_unmetered_settlement_writes_the_usage_row_only(
    stores: tuple[LedgerStore, SqlAccountStore],
) -> None:
    ledger, accounts = stores
    await ledger.settle(None, usage(42))
    account = await accounts.get_account("acct")
    assert account is not None and account.balance_micros is None
    assert await ledger.entries("acct") == []


async def test_sqlite_ledger_waits_for_a_write_lock_held_elsewhere(tmp_path: Path) -> None:
    """A lone work commits at once on the loop's thread unless SQLite's write lock is held by
    another connection (here: another process's, as the CLI's would be); then it waits in the
    queue, on the thread, and still commits once the lock is let go."""
    path = tmp_path / "ledger.db"
    db = await open_database(f"sqlite+aiosqlite:///{path}")
    await SqlAccountStore(db).create_account("acct", "acct", "whsec_x")
    ledger = SqliteLedgerStore(str(path))
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        assert await ledger.top_up("acct", 100, None) == 100  # alone: the inline path
        other.execute("BEGIN IMMEDIATE")
        top_up = asyncio.ensure_future(ledger.top_up("acct", 50, None))
        await asyncio.sleep(0.3)
        assert not top_up.done()  # neither failed nor committed past the other's lock
        other.execute("COMMIT")
        assert await asyncio.wait_for(top_up, 10) == 150
        assert [e.amount_micros for e in await ledger.entries("acct")] == [100, 50]
    finally:
        other.close()
        await ledger.aclose()
        await db.dispose()
