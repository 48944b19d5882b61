"""The dashboard's stored error counts: upserts that sum (several replicas add to one row), buckets
of any multiple of a minute, on SQLite and PostgreSQL; the in-memory log keeps its counts when
the database refuses a flush."""

from __future__ import annotations

from kimiserve.platform.error_log import ErrorLog
from kimiserve.storage.sql.database import open_database
from kimiserve.storage.sql.error_counts import ErrorBucket, SqlErrorCounts


async def test_counts_add_up_per_bucket(database_url: str) -> None:
    db = await open_database(database_url)
    try:
        store = SqlErrorCounts(db)
        base = 1_800_000_000 // 3600 * 3600
        await store.add({(base, "openai", "invalid_value"): 2, (base + 60, "runware", "invalidPrompt"): 1})
        await store.add({(base, "openai", "invalid_value"): 3, (base + 3600, "openai", "invalid_value"): 4})
        hourly = await store.buckets(base, base + 7200, 3600)
        assert hourly == [
            ErrorBucket(base, "openai", "invalid_value", 5),
            ErrorBucket(base, "runware", "invalidPrompt", 1),
            ErrorBucket(base + 3600, "openai", "invalid_value", 4),
        ]
        assert await store.buckets(base + 60, base + 3600, 60) == [
            ErrorBucket(base + 60, "runware", "invalidPrompt", 1)
        ]
    finally:
        await db.dispose()


class _Refusing(SqlErrorCounts):
    def __init__(self) -> None:
        self.calls = 0

    async def add(self, counts: object) -> None:  # type: ignore[override]
        self.calls += 1
        raise OSError("database gone")


async def test_a_refused_flush_keeps_the_counts() -> None:
    store = _Refusing()
    log = ErrorLog(store, flush_s=60)
    log.record("openai", "invalid_value")
    log.record("openai", "invalid_value")
    await log.flush()
    await log.flush()
    assert store.calls == 2
    assert sum(log._pending.values()) == 2  # neither lost nor counted twice
