"""Task deliveries any protocol can use: `sync`, `async` (results via getResponse) and webhooks.

A task is recorded (`processing`) once admitted and before any generation runs, through the
call's `on_admitted`, so a reused task id is refused (409) before a second run and the hold is
released. Then:
- `sync`: the generations run now; the results are stored and returned (errors stored and raised).
- `async`: acknowledged once admitted; the generations run in the background, their results
  stored for getResponse.
- `webhook`: the same, and each generation is enqueued for its signed POST as soon as it ends,
  success or error; a shutdown mid-run enqueues the `taskInterrupted` error (the outbox is durable).

The renderers (`Render`) are the protocol's: what a result or an error looks like on its wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from kimiserve.delivery.webhooks import delivery_id
from kimiserve.domain.inference import Admitted, Call, Inference
from kimiserve.domain.ports import TaskRow
from kimiserve.domain.principal import Principal
from kimiserve.domain.results import GenerationResult
from kimiserve.domain.tasks import INTERRUPTED, Tasks
from kimiserve.errors import KimiserveError

DeliveryMethod = Literal["sync", "async", "webhook"]


class WebhookQueue(Protocol):
    async def enqueue(
        self, delivery_id: str, account_id: str, task_uuid: str, url: str, payload: dict[str, Any]
    ) -> None: ...


@dataclass(frozen=True)
class Render:
    """A protocol's renderers for one task: a result → its stored item; an error → a webhook body."""

    item: Callable[[GenerationResult], dict[str, Any]]
    error: Callable[[KimiserveError], dict[str, Any]]


@dataclass(frozen=True)
class TaskSpec:
    """The task as recorded: its id, type, delivery and the request shown by getTaskDetails."""

    task_uuid: str
    task_type: str
    delivery: DeliveryMethod
    record: dict[str, Any]
    webhook_url: str | None = None


class TaskDelivery:
    def __init__(self, inference: Inference, tasks: Tasks, webhooks: WebhookQueue) -> None:
        self._inference = inference
        self._tasks = tasks
        self._webhooks = webhooks

    def recorded(self, principal: Principal, call: Call, spec: TaskSpec) -> Call:
        """The call, recording its task once admitted (409 for a reused id)."""

        async def begin(_: Admitted) -> None:
            await self._tasks.begin(principal, spec.task_uuid, spec.task_type, spec.delivery, spec.record)

        return replace(call, on_admitted=begin)

    async def deliver(
        self, principal: Principal, call: Call, spec: TaskSpec, render: Render
    ) -> list[dict[str, Any]] | None:
        """Run the task by its delivery: the items for `sync`, None (acknowledged) otherwise."""
        running = await self._inference.run(principal, self.recorded(principal, call, spec))
        tasks = self._tasks
        if spec.delivery in ("sync", "async"):

            async def items() -> list[dict[str, Any]]:
                return [render.item(r) for r in await running.complete()]

            if spec.delivery == "sync":
                return await tasks.track(spec.task_uuid, items())
            tasks.spawn(tasks.track(spec.task_uuid, items()))
            return None
        assert spec.webhook_url is not None
        url, task_uuid, account_id = spec.webhook_url, spec.task_uuid, principal.account_id

        async def send(key: int | str, payload: dict[str, Any]) -> None:
            await self._webhooks.enqueue(delivery_id(task_uuid, key), account_id, task_uuid, url, payload)

        async def webhook() -> list[dict[str, Any]]:
            items: dict[int, dict[str, Any]] = {}

            async def one(index: int, outcome: GenerationResult | BaseException) -> None:
                if isinstance(outcome, GenerationResult):
                    items[index] = render.item(outcome)
                    await send(index, {"data": [items[index]]})
                else:
                    assert isinstance(outcome, KimiserveError)
                    await send(index, render.error(outcome))

            try:
                await running.each(one)
            except asyncio.CancelledError:
                await asyncio.shield(send("error", render.error(INTERRUPTED)))
                raise
            return [items[i] for i in sorted(items)]

        tasks.spawn(tasks.track(task_uuid, webhook()))
        return None


async def notify_interrupted_webhook(webhooks: WebhookQueue, row: TaskRow) -> None:
    """A webhook task a stopped replica cut off gets an error delivery, so its receiver is not left
    waiting. The body is a Runware error item (`{"errors": [{code, message, taskType,
    taskUUID}]}`): webhook deliveries are Runware's (`webhookURL`), the only protocol with them."""
    task_uuid, account_id, request = row.task_uuid, row.account_id, row.request
    if row.delivery == "webhook":
        url = request.get("webhookURL")
        if isinstance(url, str):
            error = {
                "code": INTERRUPTED.code,
                "message": INTERRUPTED.message,
                "taskType": request.get("taskType"),
                "taskUUID": task_uuid,
            }
            await webhooks.enqueue(
                delivery_id(task_uuid, "error"), account_id, task_uuid, url, {"errors": [error]}
            )
