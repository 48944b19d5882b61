"""Refused and failed requests per minute, protocol and code, for the dashboard's errors plot.

Each replica adds its counts (an upsert that sums), so the table holds every replica's errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from kimiserve.storage.sql.tables import error_counts

_ADD = sa.text(
    "INSERT INTO error_counts (minute, protocol, code, count) VALUES (:minute, :protocol, :code, :count) "
    "ON CONFLICT (minute, protocol, code) DO UPDATE SET count = error_counts.count + excluded.count"
)


@dataclass(frozen=True)
class ErrorBucket:
    bucket: int  # the bucket's start, epoch seconds
    protocol: str
    code: str
    count: int


class SqlErrorCounts:
    def __init__(self, db: AsyncEngine) -> None:
        self._db = db

    async def add(self, counts: Mapping[tuple[int, str, str], int]) -> None:
        """Add `{(minute, protocol, code): count}` (minute: epoch seconds of its start)."""
        if not counts:
            return
        rows = [
            {"minute": minute, "protocol": protocol, "code": code, "count": n}
            for (minute, protocol, code), n in counts.items()
        ]
        async with self._db.begin() as conn:
            await conn.execute(_ADD, rows)

    async def buckets(self, since: float, until: float, bucket_s: int) -> list[ErrorBucket]:
        """Counts per bucket (a multiple of 60 s), protocol and code, for minutes in [since, until)."""
        bucket = ((error_counts.c.minute // bucket_s) * bucket_s).label("bucket")
        query = (
            sa.select(bucket, error_counts.c.protocol, error_counts.c.code, sa.func.sum(error_counts.c.count))
            .where(error_counts.c.minute >= int(since), error_counts.c.minute < until)
            .group_by(bucket, error_counts.c.protocol, error_counts.c.code)
            .order_by(bucket)
        )
        async with self._db.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [ErrorBucket(int(b), p, c, int(n)) for b, p, c, n in rows]
