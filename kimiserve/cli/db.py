"""`kimiserve db migrate`: bring the database (KIMISERVE_DATABASE_URL, or SQLite in the data
directory) up to this release's schema, under the migration lock, and say what was applied."""

from __future__ import annotations

import argparse

from kimiserve.settings import Settings
from kimiserve.storage.sql.database import migrate_database
from kimiserve.storage.sql.migrations import SchemaTooNew


async def run(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from sqlalchemy.ext.asyncio import create_async_engine

    url = settings.resolved_database_url()
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url)
    try:
        applied = await migrate_database(engine)
    except SchemaTooNew as exc:
        print(f"kimiserve: {exc}")
        return 1
    finally:
        await engine.dispose()
    if applied:
        for name in applied:
            print(f"applied {name}")
    else:
        print("the database is up to date")
    return 0
