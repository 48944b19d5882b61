"""Refused and failed requests counted per minute in memory and added to the database every
`flush_s`: one upsert per (minute, protocol, code) that occurred, never a write per request, so a
flood of bad requests costs a counter increment each. Fed by `Metrics.request`, the one place
both protocols report every request's outcome; read by the dashboard."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

from kimiserve.domain.ports import ErrorCounts

log = logging.getLogger(__name__)


class ErrorLog:
    def __init__(self, store: ErrorCounts, flush_s: float = 5.0) -> None:
        self._store = store
        self._flush_s = flush_s
        self._pending: Counter[tuple[int, str, str]] = Counter()
        self._task: asyncio.Task[None] | None = None

    def record(self, protocol: str, code: str) -> None:
        minute = int(time.time()) // 60 * 60
        self._pending[(minute, protocol, code[:80])] += 1

    async def flush(self) -> None:
        pending, self._pending = self._pending, Counter()
        try:
            await self._store.add(pending)
        except Exception as exc:  # the database is busy or gone: keep the counts for the next try
            log.warning("error counts not written: %s", type(exc).__name__)
            self._pending.update(pending)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_s)
            await self.flush()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
