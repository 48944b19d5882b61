"""The task lifecycle: begin → run → complete / fail / cancel, for every delivery method.

One module owns how a task ends, whether it came as sync, stream, async, webhook or over the
WebSocket. A task is recorded (as `processing`) before any work starts, so a reused taskUUID
is caught before a second run (409, never charged twice). Results and errors are stored
durably; a task ends exactly once (the store keeps the first ending).

Cancellation policy:
- **Shutdown** (the server stops while a task runs): the task ends `taskInterrupted` and is not
  charged; the client resubmits with a new taskUUID. A task a crash cut off ends the same way
  once its replica's lease expires (or at once when that replica restarts): see `replicas.py`.
- **A client leaving a stream**: the task ends `clientDisconnected`; the tokens produced until
  then are charged (pipeline policy).
- **Every other delivery** (sync, async, webhook, WebSocket) is not tied to its connection: a
  client that leaves does not cancel it; it runs to its end and its results stay available to
  getResponse (and are sent to the webhook or buffered for a WebSocket resume).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from contextlib import AbstractContextManager, suppress
from typing import Any, Protocol

from kimiserve.domain.ports import TaskExists, TaskRow, TaskStore
from kimiserve.domain.principal import Principal
from kimiserve.errors import Conflict, KimiserveError, NotFound, as_kimiserve_error

log = logging.getLogger(__name__)

INTERRUPTED = KimiserveError(
    "The server restarted while this task was running; submit it again with a new taskUUID.",
    code="taskInterrupted",
    status=503,
)
CLIENT_DISCONNECTED = KimiserveError(
    "The client left before the stream ended.", code="clientDisconnected", status=400
)


def error_record(err: KimiserveError) -> dict[str, Any]:
    """How an error is stored with its task (and rebuilt by `stored_error`)."""
    return {"code": err.code, "message": err.message, "parameter": err.parameter, "status": err.status}


def stored_error(record: dict[str, Any]) -> KimiserveError:
    return KimiserveError(
        record.get("message", "The task failed."),
        code=record.get("code", "inferenceError"),
        parameter=record.get("parameter"),
        status=int(record.get("status", 500)),
    )


class EndedNotices(Protocol):
    """'This task ended' across replicas (Redis pub/sub when several share a Redis)."""

    async def publish(self, task_uuid: str) -> None: ...
    def waiting(self, task_uuid: str) -> AbstractContextManager[asyncio.Event]: ...
    async def aclose(self) -> None: ...


class Tasks:
    def __init__(self, store: TaskStore, poll_interval_s: float = 0.5) -> None:
        self.store = store
        self._poll = poll_interval_s
        self._done: dict[str, asyncio.Event] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.shutting_down = False
        # Set when replicas share a Redis: a waiter for a task run elsewhere is woken by its notice
        # instead of polling the store.
        self.bus: EndedNotices | None = None

    async def ended_elsewhere(self, task_uuid: str) -> None:
        """A task was ended by the ownership sweep: wake whoever waits for it, on any replica."""
        await self._ended(task_uuid)

    async def begin(
        self, principal: Principal, task_uuid: str, task_type: str, delivery: str, request: dict[str, Any]
    ) -> None:
        try:
            await self.store.create(task_uuid, principal.account_id, task_type, delivery, request)
        except TaskExists:
            raise Conflict(
                f"taskUUID {task_uuid} was already used; fetch its results with getResponse.",
                parameter="taskUUID",
            ) from None
        self._done[task_uuid] = asyncio.Event()

    async def complete(self, task_uuid: str, results: list[dict[str, Any]]) -> None:
        await self.store.finish(task_uuid, results=results)
        await self._ended(task_uuid)

    async def fail(self, task_uuid: str, exc: BaseException) -> KimiserveError:
        """End the task with `exc` (an unexpected one becomes an InternalError with a reference);
        return the error as stored, for the caller to render."""
        err = as_kimiserve_error(exc)
        await self.store.finish(task_uuid, error=error_record(err))
        await self._ended(task_uuid)
        return err

    async def cancel(self, task_uuid: str, *, client_left: bool) -> None:
        """The task's runner was cancelled: by a client leaving a stream, or by shutdown."""
        err = CLIENT_DISCONNECTED if client_left and not self.shutting_down else INTERRUPTED
        await asyncio.shield(self.fail(task_uuid, err))

    async def track(self, task_uuid: str, work: Awaitable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """Await a begun task's work and end the task by its outcome (the one policy above):
        results → complete; error → fail, re-raised as the stored error; cancelled → cancel."""
        try:
            results = await work
        except asyncio.CancelledError:
            await self.cancel(task_uuid, client_left=False)
            raise
        except Exception as exc:
            raise await self.fail(task_uuid, exc) from exc
        await self.complete(task_uuid, results)
        return results

    async def _ended(self, task_uuid: str) -> None:
        self._wake(task_uuid)
        if self.bus is not None:
            await self.bus.publish(task_uuid)

    def _wake(self, task_uuid: str) -> None:
        event = self._done.pop(task_uuid, None)
        if event is not None:
            event.set()

    async def get(self, principal: Principal, task_uuid: str) -> TaskRow:
        row = await self.store.get(task_uuid)
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
            if event is None and self.bus is not None:  # run by another replica: wait for its notice
                with self.bus.waiting(task_uuid) as notice:
                    row = await self.get(principal, task_uuid)  # re-read once registered: none missed
                    if row.status != "processing":
                        break
                    with suppress(TimeoutError):
                        # A backstop re-read every 5 s, should a notice be lost (Redis restarting)
                        await asyncio.wait_for(notice.wait(), timeout=min(remaining, 5.0))
                row = await self.get(principal, task_uuid)
                continue
            try:
                if event is not None:
                    await asyncio.wait_for(event.wait(), timeout=remaining)
                else:  # run by another replica (or already done), no shared Redis: poll the store
                    await asyncio.sleep(min(self._poll, remaining))
            except TimeoutError:
                pass
            row = await self.get(principal, task_uuid)
        return row

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run work in the background, owned here so shutdown can cancel it."""
        task = asyncio.create_task(self._quietly(work))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    @staticmethod
    async def _quietly(work: Coroutine[Any, Any, Any]) -> None:
        """Background work's errors are stored with its task already; log only the unexpected."""
        try:
            await work
        except KimiserveError:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task failed")

    async def aclose(self) -> None:
        self.shutting_down = True
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self.bus is not None:
            await self.bus.aclose()
