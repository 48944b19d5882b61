"""The webhook outbox: one row per delivery, written before anything is sent.

A row is claimed by moving its `next_attempt_at` forward by a lease with a conditional update,
so several workers (or replicas) never send the same attempt twice, and a worker that dies
mid-attempt only delays the row by the lease. Enqueueing the same id twice is a no-op.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from kimiserve.domain.ports import OutboxRow
from kimiserve.storage.sql.tables import webhook_outbox


def _delivery(r: Any) -> OutboxRow:
    return OutboxRow(
        id=r.id,
        account_id=r.account_id,
        task_uuid=r.task_uuid,
        url=r.url,
        body=r.body,
        status=r.status,
        attempts=r.attempts,
        next_attempt_at=r.next_attempt_at,
        created_at=r.created_at,
        last_error=r.last_error,
    )


class SqlOutboxStore:
    def __init__(self, db: AsyncEngine) -> None:
        self._db = db

    async def enqueue(self, delivery_id: str, account_id: str, task_uuid: str, url: str, body: str) -> bool:
        """Record a delivery due now; False when that id was enqueued before."""
        now = time.time()
        try:
            async with self._db.begin() as conn:
                await conn.execute(
                    webhook_outbox.insert().values(
                        id=delivery_id,
                        account_id=account_id,
                        task_uuid=task_uuid,
                        url=url,
                        body=body,
                        status="pending",
                        attempts=0,
                        next_attempt_at=now,
                        last_error=None,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            return False
        return True

    async def claim_due(self, limit: int, lease_s: float) -> list[OutboxRow]:
        """Pending deliveries that are due, each leased to the caller for `lease_s`."""
        now = time.time()
        async with self._db.connect() as conn:
            rows = (
                await conn.execute(
                    webhook_outbox.select()
                    .where(webhook_outbox.c.status == "pending", webhook_outbox.c.next_attempt_at <= now)
                    .order_by(webhook_outbox.c.next_attempt_at)
                    .limit(limit)
                )
            ).all()
        claimed = []
        for row in rows:
            async with self._db.begin() as conn:
                result = await conn.execute(
                    webhook_outbox.update()
                    .where(
                        webhook_outbox.c.id == row.id,
                        webhook_outbox.c.status == "pending",
                        webhook_outbox.c.next_attempt_at == row.next_attempt_at,
                    )
                    .values(next_attempt_at=now + lease_s, updated_at=now)
                )
            if result.rowcount == 1:
                claimed.append(_delivery(row))
        return claimed

    async def next_due_at(self) -> float | None:
        async with self._db.connect() as conn:
            value = (
                await conn.execute(
                    sa.select(sa.func.min(webhook_outbox.c.next_attempt_at)).where(
                        webhook_outbox.c.status == "pending"
                    )
                )
            ).scalar_one_or_none()
        return float(value) if value is not None else None

    async def mark_delivered(self, delivery_id: str) -> None:
        await self._finish(delivery_id, status="delivered", error=None, next_at=None)

    async def mark_failed(self, delivery_id: str, error: str) -> None:
        """Given up: kept for the record, never tried again."""
        await self._finish(delivery_id, status="failed", error=error, next_at=None)

    async def retry_later(self, delivery_id: str, error: str, next_attempt_at: float) -> None:
        await self._finish(delivery_id, status="pending", error=error, next_at=next_attempt_at)

    async def _finish(
        self, delivery_id: str, *, status: str, error: str | None, next_at: float | None
    ) -> None:
        now = time.time()
        values: dict[str, Any] = {
            "status": status,
            "attempts": webhook_outbox.c.attempts + 1,
            "last_error": error,
            "updated_at": now,
        }
        if next_at is not None:
            values["next_attempt_at"] = next_at
        async with self._db.begin() as conn:
            await conn.execute(
                webhook_outbox.update().where(webhook_outbox.c.id == delivery_id).values(**values)
            )

    async def release(self, delivery_id: str) -> None:
        """Give a claimed row back, due now, without counting an attempt (a shutdown mid-attempt)."""
        async with self._db.begin() as conn:
            await conn.execute(
                webhook_outbox.update()
                .where(webhook_outbox.c.id == delivery_id, webhook_outbox.c.status == "pending")
                .values(next_attempt_at=time.time(), updated_at=time.time())
            )

    async def get(self, delivery_id: str) -> OutboxRow | None:
        async with self._db.connect() as conn:
            row = (
                await conn.execute(webhook_outbox.select().where(webhook_outbox.c.id == delivery_id))
            ).first()
        return _delivery(row) if row is not None else None

    async def for_task(self, task_uuid: str) -> list[OutboxRow]:
        async with self._db.connect() as conn:
            rows = (
                await conn.execute(
                    webhook_outbox.select()
                    .where(webhook_outbox.c.task_uuid == task_uuid)
                    .order_by(webhook_outbox.c.id)
                )
            ).all()
        return [_delivery(r) for r in rows]
