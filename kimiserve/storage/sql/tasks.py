"""Durable task records: the request, its status and its results, and who runs them.

A `processing` task records its replica (`owner`) and a lease (`lease_expires_at`) that the
replica renews with one statement for all its tasks; each replica keeps its own lease row in
`replicas`. A sweep ends only tasks whose lease has expired, so a live replica's are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from contextlib import AbstractAsyncContextManager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from kimiserve.domain.ports import TaskExists, TaskRow
from kimiserve.storage.sql.database import single_statement_reads
from kimiserve.storage.sql.tables import replicas, tasks


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
    def __init__(
        self,
        db: AsyncEngine,
        owner: str = "local",
        lease_s: float = 30.0,
        write_lock: asyncio.Lock | None = None,
    ) -> None:
        self._db = db
        self.owner = owner
        self.lease_s = lease_s
        self._reads = single_statement_reads(db)
        # SQLite: the lock every writer in this process takes (`sqlite_write_lock`), so writers
        # queue here instead of in SQLite's busy handler.
        self._write_lock = write_lock

    def _writing(self) -> AbstractAsyncContextManager[object]:
        return self._write_lock if self._write_lock is not None else contextlib.nullcontext()

    async def create(
        self, task_uuid: str, account_id: str, task_type: str, delivery: str, request: dict[str, Any]
    ) -> None:
        """Record a new task as `processing`; raise TaskExists when the UUID was used before."""
        now = time.time()
        try:
            async with self._writing(), self._db.begin() as conn:
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
                        owner=self.owner,
                        lease_expires_at=now + self.lease_s,
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
        async with self._writing(), self._db.begin() as conn:
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
        async with self._reads.connect() as conn:
            row = (await conn.execute(tasks.select().where(tasks.c.task_uuid == task_uuid))).first()
        return _row(row) if row is not None else None

    async def delete(self, task_uuid: str, account_id: str) -> bool:
        """Remove an ended task of `account_id`; False if there is none (or it is another's)."""
        async with self._writing(), self._db.begin() as conn:
            result = await conn.execute(
                tasks.delete().where(
                    tasks.c.task_uuid == task_uuid,
                    tasks.c.account_id == account_id,
                    tasks.c.status != "processing",
                )
            )
        return bool(result.rowcount)

    async def renew_lease(self) -> None:
        now = time.time()
        expires = now + self.lease_s
        async with self._db.begin() as conn:
            renewed = await conn.execute(
                replicas.update().where(replicas.c.id == self.owner).values(lease_expires_at=expires)
            )
            if not renewed.rowcount:
                await conn.execute(
                    replicas.insert().values(id=self.owner, started_at=now, lease_expires_at=expires)
                )
            await conn.execute(
                tasks.update()
                .where(tasks.c.status == "processing", tasks.c.owner == self.owner)
                .values(lease_expires_at=expires)
            )

    async def live_replicas(self) -> set[str]:
        async with self._db.connect() as conn:
            rows = await conn.execute(
                sa.select(replicas.c.id).where(replicas.c.lease_expires_at >= time.time())
            )
            return set(rows.scalars())

    async def end_abandoned(self, error: dict[str, Any], *, including_own: bool) -> list[TaskRow]:
        now = time.time()
        abandoned = sa.or_(tasks.c.lease_expires_at.is_(None), tasks.c.lease_expires_at < now)
        if including_own:
            abandoned = sa.or_(abandoned, tasks.c.owner == self.owner)
        async with self._db.connect() as conn:
            rows = (await conn.execute(tasks.select().where(tasks.c.status == "processing", abandoned))).all()
        ended = []
        for row in rows:  # each ended by a conditional update: the first ending wins, across replicas
            async with self._db.begin() as conn:
                result = await conn.execute(
                    tasks.update()
                    .where(tasks.c.task_uuid == row.task_uuid, tasks.c.status == "processing", abandoned)
                    .values(status="error", error_json=json.dumps(error), updated_at=now)
                )
            if result.rowcount:
                ended.append(_row(row))
        return ended

    async def count(self) -> int:
        async with self._db.connect() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(tasks))).scalar_one())
