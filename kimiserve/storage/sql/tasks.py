"""Durable task records: the request, its status and its results."""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from kimiserve.domain.ports import TaskExists, TaskRow
from kimiserve.storage.sql.tables import tasks


def _row(r: Any) -> TaskRow:
    return TaskRow(
        task_uuid=r.task_uuid,
        account_id=r.account_id,
        task_type=r.task_type,
        delivery=r.delivery,
        status=r.status,
        request=json.loads(r.request_json),
        results=json.loads(r.results_json) if r.results_json else None,
        error=json.loads(r.error_json) if r.error_json else None,
    )


class SqlTaskStore:
    def __init__(self, db: AsyncEngine) -> None:
        self._db = db

    async def create(
        self, task_uuid: str, account_id: str, task_type: str, delivery: str, request: dict[str, Any]
    ) -> None:
        """Record a new task as `processing`; raise TaskExists when the UUID was used before."""
        now = time.time()
        try:
            async with self._db.begin() as conn:
                await conn.execute(
                    tasks.insert().values(
                        task_uuid=task_uuid,
                        account_id=account_id,
                        task_type=task_type,
                        delivery=delivery,
                        status="processing",
                        request_json=json.dumps(request),
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError as exc:
            raise TaskExists(task_uuid) from exc

    async def finish(
        self,
        task_uuid: str,
        *,
        results: list[dict[str, Any]] | None = None,
        error: dict[str, Any] | None = None,
    ) -> bool:
        """End a `processing` task; False if it had already ended (the first ending wins)."""
        async with self._db.begin() as conn:
            result = await conn.execute(
                tasks.update()
                .where(tasks.c.task_uuid == task_uuid, tasks.c.status == "processing")
                .values(
                    status="error" if error is not None else "success",
                    results_json=json.dumps(results) if results is not None else None,
                    error_json=json.dumps(error) if error is not None else None,
                    updated_at=time.time(),
                )
            )
        return bool(result.rowcount)

    async def get(self, task_uuid: str) -> TaskRow | None:
        async with self._db.connect() as conn:
            row = (await conn.execute(tasks.select().where(tasks.c.task_uuid == task_uuid))).first()
        return _row(row) if row is not None else None

    async def fail_interrupted(self, error: dict[str, Any]) -> int:
        """At start-up: every task still `processing` was cut off by a restart; end it as an error."""
        async with self._db.begin() as conn:
            result = await conn.execute(
                tasks.update()
                .where(tasks.c.status == "processing")
                .values(status="error", error_json=json.dumps(error), updated_at=time.time())
            )
        return int(result.rowcount)

    async def count(self) -> int:
        async with self._db.connect() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(tasks))).scalar_one())
