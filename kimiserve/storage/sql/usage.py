"""Usage and cost records: one per generation, whichever protocol asked.

Rows are written by the ledger's settlement, in the same transaction as the charge.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from kimiserve.domain.ports import UsageRow
from kimiserve.storage.sql.tables import usage_records


class SqlUsageStore:
    def __init__(self, db: AsyncEngine) -> None:
        self._db = db

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
                account_id=r.account_id,
                key_id=r.key_id,
                request_id=r.request_id,
                protocol=r.protocol,
                model=r.model,
                prompt_tokens=r.prompt_tokens,
                completion_tokens=r.completion_tokens,
                cached_tokens=r.cached_tokens,
                reasoning_tokens=r.reasoning_tokens,
                cost_micros=r.cost_micros,
                outcome=r.outcome,
            )
            for r in rows
        ]
