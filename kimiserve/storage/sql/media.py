"""Uploaded media records (the bytes live in files under the data directory)."""

from __future__ import annotations

import time

from sqlalchemy.ext.asyncio import AsyncEngine

from kimiserve.domain.ports import MediaRow
from kimiserve.storage.sql.tables import media


class SqlMediaStore:
    def __init__(self, db: AsyncEngine) -> None:
        self._db = db

    async def add(self, row: MediaRow) -> None:
        async with self._db.begin() as conn:
            await conn.execute(
                media.insert().values(
                    id=row.id,
                    account_id=row.account_id,
                    content_type=row.content_type,
                    size_bytes=row.size_bytes,
                    sha256=row.sha256,
                    created_at=time.time(),
                )
            )

    async def get(self, media_id: str) -> MediaRow | None:
        async with self._db.connect() as conn:
            r = (await conn.execute(media.select().where(media.c.id == media_id))).first()
        if r is None:
            return None
        return MediaRow(r.id, r.account_id, r.content_type, r.size_bytes, r.sha256)
