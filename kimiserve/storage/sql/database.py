"""The async SQLAlchemy engine: SQLite (WAL) by default, PostgreSQL by URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from kimiserve.errors import ServiceUnavailable
from kimiserve.storage.sql.migrations import migrate


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


async def open_database(url: str) -> AsyncEngine:
    """Create the engine, make sure a SQLite file's folder exists, and run migrations."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine.sync_engine, "handle_error", _busy_is_unavailable)
    async with engine.begin() as conn:
        await conn.run_sync(migrate)
    return engine
