"""The dashboard's usage aggregates: the hourly rollup (kept by a trigger) sums exactly what the
usage rows sum, whichever ledger store wrote them, per account, model and key."""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from kimiserve.domain.ports import LedgerStore, UsageRow
from kimiserve.storage.sql.database import open_database
from kimiserve.storage.sql.ledger import SqlLedgerStore
from kimiserve.storage.sql.reports import SqlReports
from kimiserve.storage.sql.sqlite_ledger import SqliteLedgerStore


@pytest.fixture(params=["sqlalchemy", "sqlite"])
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[LedgerStore, AsyncEngine]]:
    path = tmp_path / "reports.db"
    db = await open_database(f"sqlite+aiosqlite:///{path}")
    sqlite = SqliteLedgerStore(str(path)) if request.param == "sqlite" else None
    try:
        yield (sqlite if sqlite is not None else SqlLedgerStore(db)), db
    finally:
        if sqlite is not None:
            await sqlite.aclose()
        await db.dispose()


def _spread_over_hours(path: Path, hours: int) -> None:
    """Move the rows (written now) back over the last `hours` hours, and rebuild the rollup as
    the trigger would have kept it had they been written then."""
    with sqlite3.connect(path) as db:
        rng = random.Random(3)
        for (row_id,) in db.execute("SELECT id FROM usage_records").fetchall():
            db.execute(
                "UPDATE usage_records SET created_at = created_at - ? WHERE id = ?",
                (rng.uniform(0, hours * 3600), row_id),
            )
        rows = db.execute("SELECT * FROM usage_records").fetchall()
        columns = [c[1] for c in db.execute("PRAGMA table_info(usage_records)")]
        db.execute("DELETE FROM usage_hourly")
        db.execute("DELETE FROM usage_records")
        placeholders = ", ".join("?" for _ in columns)
        db.executemany(f"INSERT INTO usage_records ({', '.join(columns)}) VALUES ({placeholders})", rows)


async def test_the_hourly_rollup_sums_what_the_rows_sum(
    stores: tuple[LedgerStore, AsyncEngine], tmp_path: Path
) -> None:
    ledger, db = stores
    rng = random.Random(1)
    for i in range(300):
        timed = i % 5 != 0  # some rows without timing (older rows, disconnects)
        await ledger.settle(
            None,
            UsageRow(
                account_id=rng.choice(["a1", "a2"]),
                key_id=rng.choice(["k1", "k2", None]),
                request_id=f"r{i}",
                protocol="openai",
                model=rng.choice(["m1", "m2"]),
                prompt_tokens=rng.randint(1, 500),
                completion_tokens=rng.randint(1, 300),
                cached_tokens=0,
                reasoning_tokens=0,
                cost_micros=rng.randint(0, 900),
                ttft_ms=rng.randint(5, 500) if timed else None,
                decode_ms=rng.randint(0, 4000) if timed else None,
            ),
        )
    _spread_over_hours(tmp_path / "reports.db", hours=48)
    reports = SqlReports(db)
    until = (int(time.time()) // 3600 + 1) * 3600
    since = until - 72 * 3600
    totals = {}
    for account in (None, "a1", "a2"):
        hourly = await reports.usage(since, until, 3600, account)  # the rollup
        raw = await reports.usage(since, until - 1, 3600, account)  # not whole hours: the rows
        assert hourly == raw
        assert {b.key_id for b in hourly} == {"k1", "k2", None}
        totals[account] = sum(b.requests for b in hourly)
        six = await reports.usage(since, until, 6 * 3600, account)
        assert {b.bucket % (6 * 3600) for b in six} == {0}
        assert sum(b.cost_micros for b in six) == sum(b.cost_micros for b in hourly)
        assert sum(b.decode_ms for b in six) == sum(b.decode_ms for b in raw)
    assert totals[None] == 300 == totals["a1"] + totals["a2"]


async def test_the_rollup_trigger_on_postgresql(postgres: object) -> None:
    """PostgreSQL's 005 keeps the same rollup with a PL/pgSQL trigger: the rollup's sums are the
    rows' sums, bucket by bucket (rows moved over several hours, most in an hour's second half,
    where a rounding cast would put them in the next bucket)."""
    from tests.dbservers import PostgresServer

    assert isinstance(postgres, PostgresServer)
    db = await open_database(postgres.create_database())
    try:
        ledger = SqlLedgerStore(db)
        rng = random.Random(2)
        for i in range(60):
            timed = i % 4 != 0
            await ledger.settle(
                None,
                UsageRow(
                    account_id=rng.choice(["a1", "a2"]),
                    key_id=rng.choice(["k1", None]),
                    request_id=f"r{i}",
                    protocol="runware",
                    model="m1",
                    prompt_tokens=rng.randint(1, 500),
                    completion_tokens=rng.randint(1, 300),
                    cached_tokens=0,
                    reasoning_tokens=0,
                    cost_micros=rng.randint(0, 900),
                    ttft_ms=rng.randint(5, 500) if timed else None,
                    decode_ms=rng.randint(1, 4000) if timed else None,
                ),
            )
        base = (int(time.time()) // 3600 - 6) * 3600
        async with db.begin() as conn:  # re-inserted so the trigger sees the moved times
            await conn.execute(
                sa.text("UPDATE usage_records SET created_at = :base + (id % 7) * 1500 + 2000"),
                {"base": base},
            )
            await conn.execute(sa.text("DELETE FROM usage_hourly"))
            await conn.execute(sa.text("CREATE TEMP TABLE moved AS SELECT * FROM usage_records"))
            await conn.execute(sa.text("DELETE FROM usage_records"))
            await conn.execute(sa.text("INSERT INTO usage_records SELECT * FROM moved"))
        reports = SqlReports(db)
        since, until = base - 3600, base + 6 * 3600
        assert len({b.bucket for b in await reports.usage(since, until, 3600, None)}) >= 3
        for account in (None, "a1"):
            hourly = await reports.usage(since, until, 3600, account)  # the rollup
            raw = await reports.usage(since, until - 1, 3600, account)  # the rows
            assert sorted(hourly, key=repr) == sorted(raw, key=repr) and hourly  # NULLs sort apart
        assert sum(b.requests for b in await reports.usage(since, until, 3600, None)) == 60
    finally:
        await db.dispose()
