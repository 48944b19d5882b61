"""Read-only aggregates for the dashboard: usage over time, recent tasks, a task's deliveries.

Every aggregate is one `GROUP BY` in SQL: over the hourly rollup (migration 004's trigger keeps
it) for whole-hour buckets, over the usage rows' `created_at` index for finer ones, so a month of
a busy server's usage comes back as a few thousand grouped rows, never as raw rows.
`account_id` None: every account (an admin's view); otherwise that account's rows only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kimiserve.storage.sql.tables import tasks, usage_hourly, usage_records, webhook_outbox


@dataclass(frozen=True)
class UsageBucket:
    """One time bucket of one model and one key."""

    bucket: int  # the bucket's start, epoch seconds
    model: str
    key_id: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    ttft_ms_sum: int  # over `timed` rows
    timed: int  # rows with a measured time to first token
    decode_tokens: int  # completion tokens of rows with a measured decode time
    decode_ms: int


@dataclass(frozen=True)
class TaskSummary:
    task_uuid: str
    account_id: str
    task_type: str
    delivery: str
    status: str
    created_at: float
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_micros: int | None


@dataclass(frozen=True)
class TaskDetail:
    summary: TaskSummary
    request: dict[str, Any]
    results: list[dict[str, Any]] | None
    error: dict[str, Any] | None


@dataclass(frozen=True)
class Attempt:
    """A webhook delivery as the outbox keeps it (its last attempt's outcome)."""

    id: str
    url: str
    status: str
    attempts: int
    last_error: str | None


_U = usage_records


class SqlReports:
    def __init__(self, db: AsyncEngine) -> None:
        self._db = db

    async def usage(
        self, since: float, until: float, bucket_s: int, account_id: str | None = None
    ) -> list[UsageBucket]:
        """Sums per bucket, model and key. Whole-hour buckets from whole-hour bounds read the
        hourly rollup; finer ones the usage rows themselves."""
        if bucket_s % 3600 == 0 and since % 3600 == 0 and until % 3600 == 0:
            query = self._hourly(since, until, bucket_s, account_id)
        else:
            query = self._rows(since, until, bucket_s, account_id, self._db.dialect.name)
        async with self._db.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            UsageBucket(
                bucket=int(r.bucket),
                model=r.model,
                key_id=r.key_id or None,
                requests=int(r.requests),
                prompt_tokens=int(r.prompt_tokens or 0),
                completion_tokens=int(r.completion_tokens or 0),
                cost_micros=int(r.cost_micros or 0),
                ttft_ms_sum=int(r.ttft_ms_sum or 0),
                timed=int(r.timed or 0),
                decode_tokens=int(r.decode_tokens or 0),
                decode_ms=int(r.decode_ms or 0),
            )
            for r in rows
        ]

    @staticmethod
    def _rows(
        since: float, until: float, bucket_s: int, account_id: str | None, dialect: str
    ) -> sa.Select[Any]:
        # The bucket's start: SQLite's CAST truncates (times are positive, so that is the floor);
        # PostgreSQL's rounds, so it is floored first.
        step = _U.c.created_at / bucket_s
        whole = sa.func.floor(step) if dialect == "postgresql" else step
        bucket = (sa.cast(whole, sa.BigInteger) * bucket_s).label("bucket")
        decoded = _U.c.decode_ms > 0
        query = sa.select(
            bucket,
            _U.c.model,
            _U.c.key_id,
            sa.func.count().label("requests"),
            sa.func.sum(_U.c.prompt_tokens).label("prompt_tokens"),
            sa.func.sum(_U.c.completion_tokens).label("completion_tokens"),
            sa.func.sum(_U.c.cost_micros).label("cost_micros"),
            sa.func.sum(_U.c.ttft_ms).label("ttft_ms_sum"),
            sa.func.count(_U.c.ttft_ms).label("timed"),
            sa.func.sum(sa.case((decoded, _U.c.completion_tokens), else_=0)).label("decode_tokens"),
            sa.func.sum(sa.case((decoded, _U.c.decode_ms), else_=0)).label("decode_ms"),
        ).where(_U.c.created_at >= since, _U.c.created_at < until)
        if account_id is not None:
            query = query.where(_U.c.account_id == account_id)
        return query.group_by(bucket, _U.c.model, _U.c.key_id).order_by(bucket)

    @staticmethod
    def _hourly(since: float, until: float, bucket_s: int, account_id: str | None) -> sa.Select[Any]:
        h = usage_hourly.c
        bucket = ((h.hour // bucket_s) * bucket_s).label("bucket")
        query = sa.select(
            bucket,
            h.model,
            h.key_id,
            sa.func.sum(h.requests).label("requests"),
            sa.func.sum(h.prompt_tokens).label("prompt_tokens"),
            sa.func.sum(h.completion_tokens).label("completion_tokens"),
            sa.func.sum(h.cost_micros).label("cost_micros"),
            sa.func.sum(h.ttft_ms_sum).label("ttft_ms_sum"),
            sa.func.sum(h.timed).label("timed"),
            sa.func.sum(h.decode_tokens).label("decode_tokens"),
            sa.func.sum(h.decode_ms).label("decode_ms"),
        ).where(h.hour >= int(since), h.hour < int(until))
        if account_id is not None:
            query = query.where(h.account_id == account_id)
        return query.group_by(bucket, h.model, h.key_id).order_by(bucket)

    async def _with_usage(self, conn: AsyncConnection, rows: list[Any]) -> list[TaskSummary]:
        """The tasks with their usage totals (a Runware task's usage rows carry its taskUUID)."""
        ids = [r.task_uuid for r in rows]
        usage = (
            (
                await conn.execute(
                    sa.select(
                        _U.c.request_id,
                        sa.func.max(_U.c.model).label("model"),
                        sa.func.sum(_U.c.prompt_tokens).label("prompt_tokens"),
                        sa.func.sum(_U.c.completion_tokens).label("completion_tokens"),
                        sa.func.sum(_U.c.cost_micros).label("cost_micros"),
                    )
                    .where(_U.c.request_id.in_(ids))
                    .group_by(_U.c.request_id)
                )
            ).all()
            if ids
            else []
        )
        by_id = {u.request_id: u for u in usage}
        return [_summary(r, by_id.get(r.task_uuid)) for r in rows]

    async def recent_tasks(self, account_id: str | None, limit: int = 100) -> list[TaskSummary]:
        query = sa.select(*_SUMMARY).order_by(tasks.c.created_at.desc()).limit(limit)
        if account_id is not None:
            query = query.where(tasks.c.account_id == account_id)
        async with self._db.connect() as conn:
            return await self._with_usage(conn, list((await conn.execute(query)).all()))

    async def task(self, task_uuid: str, account_id: str | None) -> TaskDetail | None:
        """One task; None when it does not exist or belongs to another account than `account_id`."""
        query = sa.select(*_SUMMARY, tasks.c.request_json, tasks.c.results_json, tasks.c.error_json)
        query = query.where(tasks.c.task_uuid == task_uuid)
        if account_id is not None:
            query = query.where(tasks.c.account_id == account_id)
        async with self._db.connect() as conn:
            row = (await conn.execute(query)).first()
            if row is None:
                return None
            [summary] = await self._with_usage(conn, [row])
        return TaskDetail(
            summary=summary,
            request=json.loads(row.request_json),
            results=json.loads(row.results_json) if row.results_json else None,
            error=json.loads(row.error_json) if row.error_json else None,
        )

    async def deliveries(self, task_uuid: str) -> list[Attempt]:
        query = (
            sa.select(
                webhook_outbox.c.id,
                webhook_outbox.c.url,
                webhook_outbox.c.status,
                webhook_outbox.c.attempts,
                webhook_outbox.c.last_error,
            )
            .where(webhook_outbox.c.task_uuid == task_uuid)
            .order_by(webhook_outbox.c.created_at)
        )
        async with self._db.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [Attempt(r.id, r.url, r.status, r.attempts, r.last_error) for r in rows]


_SUMMARY = (
    tasks.c.task_uuid,
    tasks.c.account_id,
    tasks.c.task_type,
    tasks.c.delivery,
    tasks.c.status,
    tasks.c.created_at,
)


def _summary(r: Any, usage: Any | None) -> TaskSummary:
    return TaskSummary(
        task_uuid=r.task_uuid,
        account_id=r.account_id,
        task_type=r.task_type,
        delivery=r.delivery,
        status=r.status,
        created_at=r.created_at,
        model=usage.model if usage is not None else None,
        prompt_tokens=int(usage.prompt_tokens) if usage is not None else None,
        completion_tokens=int(usage.completion_tokens) if usage is not None else None,
        cost_micros=int(usage.cost_micros) if usage is not None else None,
    )
