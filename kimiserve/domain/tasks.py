"""The task lifecycle: record → run in the background → store results → wake waiters.

A task is recorded (as `processing`) before any work starts, so a reused taskUUID is caught
before a second run. Results are stored durably; a task cut off by a restart is ended as an
error at the next start-up, never left in `processing`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from kimiserve.errors import Conflict, NotFound
from kimiserve.platform.api_keys import Principal
from kimiserve.storage.sql.tasks import SqlTaskStore, TaskExists, TaskRow

log = logging.getLogger(__name__)

INTERRUPTED = {
    "code": "taskInterrupted",
    "message": "The server restarted while this task was running; submit it again with a new taskUUID.",
}


class Tasks:
    def __init__(self, store: SqlTaskStore, poll_interval_s: float = 0.5) -> None:
        self._store = store
        self._poll = poll_interval_s
        self._done: dict[str, asyncio.Event] = {}
        self._background: set[asyncio.Task[Any]] = set()

    async def recover(self) -> int:
        """At start-up: end every task a restart cut off."""
        count = await self._store.fail_interrupted(INTERRUPTED)
        if count:
            log.warning("ended %d task(s) interrupted by a restart", count)
        return count

    async def begin(
        self, principal: Principal, task_uuid: str, task_type: str, delivery: str, request: dict[str, Any]
    ) -> None:
        try:
            await self._store.create(task_uuid, principal.account_id, task_type, delivery, request)
        except TaskExists:
            raise Conflict(
                f"taskUUID {task_uuid} was already used; fetch its results with getResponse.",
                parameter="taskUUID",
            ) from None
        self._done[task_uuid] = asyncio.Event()

    async def complete(self, task_uuid: str, results: list[dict[str, Any]]) -> None:
        await self._store.finish(task_uuid, results=results)
        self._wake(task_uuid)

    async def fail(self, task_uuid: str, error: dict[str, Any]) -> None:
        await self._store.finish(task_uuid, error=error)
        self._wake(task_uuid)

    def _wake(self, task_uuid: str) -> None:
        event = self._done.pop(task_uuid, None)
        if event is not None:
            event.set()

    async def get(self, principal: Principal, task_uuid: str) -> TaskRow:
        row = await self._store.get(task_uuid)
        if row is None or row.account_id != principal.account_id:
            raise NotFound(
                f"No task {task_uuid} for this account.", code="taskNotFound", parameter="taskUUID"
            )
        return row

    async def wait(self, principal: Principal, task_uuid: str, timeout_s: float) -> TaskRow:
        """The task's row, held until it leaves `processing` or the timeout passes."""
        row = await self.get(principal, task_uuid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while row.status == "processing":
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            event = self._done.get(task_uuid)
            try:
                if event is not None:
                    await asyncio.wait_for(event.wait(), timeout=remaining)
                else:  # run by another replica (or already done): poll the store
                    await asyncio.sleep(min(self._poll, remaining))
            except TimeoutError:
                pass
            row = await self.get(principal, task_uuid)
        return row

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run work in the background, owned here so shutdown can cancel it."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
