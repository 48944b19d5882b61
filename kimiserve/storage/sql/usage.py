"""Usage and cost records: one per generation, whichever protocol asked."""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from kimiserve.storage.sql.tables import usage_records


@dataclass(frozen=True)
class UsageRow:
    account_id: str
    request_id: str
    protocol: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_usd: float


class SqlUsageStore:
    def __init__(self, db: AsyncEngine) -> None:
        self._db = db

    async def record(self, row: UsageRow) -> None:
        async with self._db.begin() as conn:
            await conn.execute(usage_records.insert().values(**row.__dict__, created_at=time.time()))

    async def for_account(self, account_id: str) -> list[UsageRow]:
        async with self._db.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(usage_records)
                    .where(usage_records.c.account_id == account_id)
                    .order_by(usage_records.c.id)
                )
            ).all()
        return [
            UsageRow(
                r.account_id,
                r.request_id,
                r.protocol,
                r.model,
                r.prompt_tokens,
                r.completion_tokens,
                r.cached_tokens,
                r.reasoning_tokens,
                r.cost_usd,
            )
            for r in rows
        ]
