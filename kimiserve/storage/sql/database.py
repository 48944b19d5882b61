"""The async SQLAlchemy engine: SQLite (WAL) by default, PostgreSQL by URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from kimiserve.errors import ServiceUnavailable
from kimiserve.storage.sql.migrations import is_current, migrate


def _busy_is_unavailable(context: sa.engine.ExceptionContext) -> None:
    """A database another process holds locked past the busy timeout is a temporary outage
    (503 `serviceUnavailable`, retry later), not a bug in kimiserve (500)."""
    if "database is locked" in str(context.original_exception):
        raise ServiceUnavailable("The database is busy; try again shortly.") from context.original_exception


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def single_statement_reads(engine: AsyncEngine) -> AsyncEngine:
    """The engine for one-statement reads on the hot path (authentication, getResponse): on
    PostgreSQL in autocommit, which saves the BEGIN and ROLLBACK round trips asyncpg would add
    around each read (a single statement sees one snapshot either way); SQLite's is unchanged."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine


async def migrate_database(engine: AsyncEngine) -> list[str]:
    """Bring the schema up to date under the migration lock; return the names applied (none when
    another replica got there first). Raises SchemaTooNew for a database newer than the code."""
    if engine.dialect.name == "sqlite":
        # An exclusive transaction, begun by hand: the driver would otherwise run DDL outside one.
        async with engine.connect() as conn:
            raw = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await raw.exec_driver_sql("BEGIN EXCLUSIVE")
            try:
                applied = await raw.run_sync(migrate)
            except BaseException:
                await raw.exec_driver_sql("ROLLBACK")
                raise
            await raw.exec_driver_sql("COMMIT")
        return applied
    async with engine.begin() as conn:  # PostgreSQL: migrate() takes the advisory lock first
        return await conn.run_sync(migrate)


async def open_database(url: str, *, auto_migrate: bool = True) -> AsyncEngine:
    """Create the engine, make sure a SQLite file's folder exists, and bring the schema up to date
    when it is behind (the lock is taken only then). Without `auto_migrate`, a schema that is behind
    is an error naming `kimiserve db migrate`."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine.sync_engine, "handle_error", _busy_is_unavailable)
    try:
        async with engine.connect() as conn:
            current = await conn.run_sync(is_current)
        if not current:
            if not auto_migrate:
                raise RuntimeError(
                    "The database schema is behind this kimiserve: run `kimiserve db migrate`."
                )
            await migrate_database(engine)
    except BaseException:
        await engine.dispose()
        raise
    return engine
