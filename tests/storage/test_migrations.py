"""Migrations are frozen DDL: a database made by the first release is brought forward with its
money intact (floats become exact micro-USD, opening the ledger), and a new one gets the same
schema."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from kimiserve.storage.sql import tables
from kimiserve.storage.sql.database import migrate_database, open_database
from kimiserve.storage.sql.migrations import (
    _001_INITIAL,
    _002_WEBHOOKS_MEDIA,
    MIGRATIONS,
    PG_MIGRATIONS,
    SchemaTooNew,
    _statements,
)
from tests.dbservers import PostgresServer
from tests.serverproc import ServerProcess, cli


def _columns(db: sqlite3.Connection, table: str) -> list[tuple[str, str]]:
    return sorted((r[1], r[2]) for r in db.execute(f"PRAGMA table_info({table})"))


async def test_old_database_is_migrated_with_its_money(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as db:
        db.executescript(_001_INITIAL + _002_WEBHOOKS_MEDIA)
        db.execute(
            "CREATE TABLE schema_migrations (name VARCHAR(200) PRIMARY KEY, applied_at FLOAT NOT NULL)"
        )
        db.executemany(
            "INSERT INTO schema_migrations VALUES (?, 0)", [("001_initial",), ("002_webhooks_media",)]
        )
        db.execute("INSERT INTO accounts VALUES ('a1', 'acme', 1.25, 'whsec_x', 0)")
        db.execute("INSERT INTO accounts VALUES ('a2', 'free', NULL, 'whsec_y', 0)")
        db.execute("INSERT INTO api_keys VALUES ('k1', 'a1', 'k', 'h', 0, NULL)")
        db.execute(
            "INSERT INTO usage_records VALUES (1, 'a1', 'r', 'runware', 'm', 10, 5, 0, 0, 0.0000123, 0)"
        )
    engine = await open_database(f"sqlite+aiosqlite:///{old}")
    await engine.dispose()
    fresh = tmp_path / "fresh.db"
    engine = await open_database(f"sqlite+aiosqlite:///{fresh}")
    await engine.dispose()
    with sqlite3.connect(old) as db, sqlite3.connect(fresh) as new:
        assert db.execute("SELECT balance_micros, reserved_micros FROM accounts ORDER BY id").fetchall() == [
            (1_250_000, 0),
            (None, 0),
        ]
        assert db.execute("SELECT kind, amount_micros FROM ledger_entries").fetchall() == [
            ("adjustment", 1_250_000)
        ]
        assert db.execute("SELECT cost_micros FROM usage_records").fetchall() == [(12,)]
        assert db.execute("SELECT scopes FROM api_keys").fetchall() == [
            ("inference tasks:read media:upload",)
        ]
        names = [r[0] for r in db.execute("SELECT name FROM schema_migrations ORDER BY name")]
        assert names == [name for name, _ in MIGRATIONS]
        for table in ("accounts", "api_keys", "usage_records", "tasks", "ledger_entries"):
            assert _columns(db, table) == _columns(new, table), table


# ---- issue 13: per dialect, frozen, locked, and refusing a newer database -------------------

# The sha256 of each released migration's text. A released migration never changes: a test
# failing here means one was edited — add the next migration instead.
FROZEN = {
    ("sqlite", "001_initial"): "cae70e5766712ff60422e9036e60754e60e14d750cadef40168623127f1e526b",
    ("sqlite", "002_webhooks_media"): "002575436bb5210f3ca07f0b8a7667b156f395afe2d222c08cb0b979fd636426",
    (
        "sqlite",
        "003_ledger_scopes_limits",
    ): "06ada39aad70c27d3db4f74fe226530f6ba3e17b746cb2d62f934ca9b340c528",
    ("sqlite", "004_task_ownership"): "717c88ad58fa99860339505d36f72c51c5b1ed6641b74cadc309fe9f6bdd60de",
    ("sqlite", "005_usage_timing_hourly"): "0cab6d64cb50f33dc97d58cb89c9498b100ba3a51c922b65af7f51f19ddb1a6f",
    ("sqlite", "006_error_counts"): "467f3d3ff6af4678ec45a986c8ce47783be4454882c30d12961c95c6942545f4",
    ("postgresql", "001_initial"): "76571828c7b4f78bbf05626698ea1e002bc6b1a0895148dd244c5cf9a8daf8b7",
    ("postgresql", "002_webhooks_media"): "ca4cea7bf6b4c31bde7a3e39570fea60ff661d8e7abfb2db103cb7443d6058ff",
    (
        "postgresql",
        "003_ledger_scopes_limits",
    ): "17e8f5c1d044e9e1bde4c34d2a546457bb04b77a4562cf28459f130a22589b85",
    ("postgresql", "004_task_ownership"): "d1b24fac3518ab737524b17a0ce0adb3830c63d04228109bbe9c36950854e4b7",
    (
        "postgresql",
        "005_usage_timing_hourly",
    ): "9bebc1228cfe3fe97a37058d9617cc43d4574ccfb8e0f758683278017b953554",
    ("postgresql", "006_error_counts"): "229c4d3c328bdd56102be0990461996f01b40eaea86171a6aa3763dadca36625",
}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_released_migrations_are_frozen() -> None:
    texts = {("sqlite", n): t for n, t in MIGRATIONS} | {("postgresql", n): t for n, t in PG_MIGRATIONS}
    assert {key: _sha(text) for key, text in texts.items()} == FROZEN
    assert [n for n, _ in MIGRATIONS] == [n for n, _ in PG_MIGRATIONS]


async def test_a_new_database_gets_every_column_the_queries_use(database_url: str) -> None:
    engine = await open_database(database_url)
    try:
        async with engine.connect() as conn:

            def columns(sync: Connection) -> dict[str, set[str]]:
                inspector = sa.inspect(sync)
                return {t: {c["name"] for c in inspector.get_columns(t)} for t in tables.metadata.tables}

            found = await conn.run_sync(columns)
            names = (await conn.execute(sa.select(tables.schema_migrations.c.name))).scalars().all()
    finally:
        await engine.dispose()
    assert found == {t.name: {c.name for c in t.columns} for t in tables.metadata.tables.values()}
    assert sorted(names) == [n for n, _ in MIGRATIONS]


async def test_replicas_starting_together_migrate_once(database_url: str) -> None:
    """Eight engines open one empty database at the same moment: every migration is applied by
    exactly one of them (the lock), and all eight open without an error."""
    engines = [create_async_engine(database_url) for _ in range(8)]
    try:
        results = await asyncio.gather(*(migrate_database(e) for e in engines))
        applied = [name for names in results for name in names]
        assert sorted(applied) == [n for n, _ in MIGRATIONS]
        async with engines[0].connect() as conn:
            count = (
                await conn.execute(sa.select(sa.func.count()).select_from(tables.schema_migrations))
            ).scalar()
        assert count == len(MIGRATIONS)
    finally:
        for e in engines:
            await e.dispose()


async def test_a_database_newer_than_the_code_refuses_to_open(database_url: str) -> None:
    engine = await open_database(database_url)
    async with engine.begin() as conn:
        await conn.execute(tables.schema_migrations.insert().values(name="999_from_the_future", applied_at=0))
    await engine.dispose()
    with pytest.raises(SchemaTooNew, match="999_from_the_future"):
        await open_database(database_url)


async def test_old_postgresql_database_is_migrated_with_its_money(postgres: PostgresServer) -> None:
    url = postgres.create_database()
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for statement in _statements(PG_MIGRATIONS[0][1] + PG_MIGRATIONS[1][1]):
                await conn.exec_driver_sql(statement)
            await conn.run_sync(tables.schema_migrations.create)
            await conn.execute(
                tables.schema_migrations.insert(),
                [{"name": "001_initial", "applied_at": 0}, {"name": "002_webhooks_media", "applied_at": 0}],
            )
            await conn.exec_driver_sql("INSERT INTO accounts VALUES ('a1', 'acme', 1.25, 'whsec_x', 0)")
            await conn.exec_driver_sql("INSERT INTO accounts VALUES ('a2', 'free', NULL, 'whsec_y', 0)")
            await conn.exec_driver_sql(
                "INSERT INTO usage_records (account_id, request_id, protocol, model, prompt_tokens, "
                "completion_tokens, cached_tokens, reasoning_tokens, cost_usd, created_at) "
                "VALUES ('a1', 'r', 'runware', 'm', 10, 5, 0, 0, 0.0000123, 0)"
            )
    finally:
        await engine.dispose()
    engine = await open_database(url)
    try:
        async with engine.connect() as conn:
            balances = (
                await conn.exec_driver_sql("SELECT balance_micros, reserved_micros FROM accounts ORDER BY id")
            ).all()
            ledger = (await conn.exec_driver_sql("SELECT kind, amount_micros FROM ledger_entries")).all()
            costs = (await conn.exec_driver_sql("SELECT cost_micros FROM usage_records")).all()
    finally:
        await engine.dispose()
    assert [tuple(r) for r in balances] == [(1_250_000, 0), (None, 0)]
    assert [tuple(r) for r in ledger] == [("adjustment", 1_250_000)]
    assert [tuple(r) for r in costs] == [(12,)]


def test_db_migrate_command_applies_then_reports_up_to_date(postgres: PostgresServer, tmp_path: Path) -> None:
    env = {"KIMISERVE_DATABASE_URL": postgres.create_database()}
    first = cli(tmp_path, "db", "migrate", env=env)
    assert first.splitlines() == [f"applied {name}" for name, _ in PG_MIGRATIONS]
    assert cli(tmp_path, "db", "migrate", env=env).strip() == "the database is up to date"


def test_a_server_on_a_newer_database_refuses_to_start_saying_why(tmp_path: Path) -> None:
    cli(tmp_path, "db", "migrate")
    with sqlite3.connect(tmp_path / "kimiserve.db") as db:
        db.execute("INSERT INTO schema_migrations VALUES ('999_from_the_future', 0)")
    proc = ServerProcess(tmp_path, env={"KIMISERVE_ENGINE": "fake"})
    with pytest.raises(RuntimeError, match="exited early") as failed:
        proc.start(timeout_s=60)
    assert "999_from_the_future" in str(failed.value) and "refusing to start" in str(failed.value)
