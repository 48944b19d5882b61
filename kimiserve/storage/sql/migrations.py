"""Append-only, named migrations. Never edit one that has shipped: add the next."""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kimiserve.storage.sql import tables

Migration = tuple[str, Callable[[Connection], None]]


def _m001_initial(conn: Connection) -> None:
    for table in (tables.accounts, tables.api_keys, tables.tasks, tables.usage_records):
        table.create(conn, checkfirst=True)


def _m002_webhooks_media(conn: Connection) -> None:
    for table in (tables.webhook_outbox, tables.media):
        table.create(conn, checkfirst=True)


MIGRATIONS: list[Migration] = [
    ("001_initial", _m001_initial),
    ("002_webhooks_media", _m002_webhooks_media),
]


def migrate(conn: Connection) -> list[str]:
    """Apply every migration not yet recorded; return the names applied."""
    tables.schema_migrations.create(conn, checkfirst=True)
    done = set(conn.execute(sa.select(tables.schema_migrations.c.name)).scalars())
    applied = []
    for name, step in MIGRATIONS:
        if name in done:
            continue
        step(conn)
        conn.execute(tables.schema_migrations.insert().values(name=name, applied_at=time.time()))
        applied.append(name)
    return applied
