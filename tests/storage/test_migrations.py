"""Migrations are frozen DDL: a database made by the first release is brought forward with its
money intact (floats become exact micro-USD, opening the ledger), and a new one gets the same
schema."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kimiserve.storage.sql.database import open_database
from kimiserve.storage.sql.migrations import _001_INITIAL, _002_WEBHOOKS_MEDIA, MIGRATIONS


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
