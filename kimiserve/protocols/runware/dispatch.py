"""taskType → handler, for task arrays from HTTP and the WebSocket.

Each task succeeds or fails on its own: a handler returns its data items or raises, and the
caller renders the error for that task alone. Every handler works on the validated, typed
task; a textInference goes through the front door (`domain/inference.py`) and its lifecycle
through `domain/tasks.py`. Deliveries: `sync` answers with the results, `async` with an
acknowledgement (results via getResponse), and a task with `webhookURL` is acknowledged the
same way and then POSTs each generation to that URL through the outbox.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from kimiserve.delivery.tasks import DeliveryMethod, Render, TaskSpec
from kimiserve.domain.inference import Call
from kimiserve.domain.principal import Principal, authorize
from kimiserve.domain.tasks import Tasks, stored_error
from kimiserve.errors import (
    InvalidRequest,
    KimiserveError,
    RateLimited,
    UnsupportedFeature,
)
from kimiserve.http.context import Context
from kimiserve.media.fetch import FetchError
from kimiserve.protocols.runware import translate
from kimiserve.protocols.runware.errors import error_item, status_of
from kimiserve.protocols.runware.models import (
    GetResponseTask,
    GetTaskDetailsTask,
    ImageUploadTask,
    PingTask,
    Task,
    TextInferenceTask,
)
from kimiserve.protocols.runware.validation import parse_task, task_type_of, task_uuid_of
from kimiserve.settings import Settings

log = logging.getLogger(__name__)

PROTOCOL = translate.PROTOCOL


@dataclass(frozen=True)
class ArrayReply:
    """The reply to a task array: data items, error items, and the HTTP status."""

    data: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    status: int
    retry_after_s: float | None = None  # set when a task was refused by a rate limit

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.data or not self.errors:
            out["data"] = self.data
        if self.errors:
            out["errors"] = self.errors
        return out


def public_base_url(settings: Settings) -> str:
    """Where clients reach this server, when the transport cannot tell (no request to look at)."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = "localhost" if settings.host in ("0.0.0.0", "::", "") else settings.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.port}"


def task_record(task: Task) -> dict[str, Any]:
    """The task as stored with its record (and echoed by getTaskDetails)."""
    return task.model_dump(mode="json", by_alias=True, exclude_unset=True)


def task_spec(task: TextInferenceTask) -> TaskSpec:
    """How a textInference task is recorded and delivered."""
    delivery: DeliveryMethod = "webhook" if task.webhookURL is not None else "async"
    if task.webhookURL is None and task.deliveryMethod != "async":
        delivery = "sync"  # "stream" is refused before: it is answered by stream.py
    return TaskSpec(task.taskUUID, "textInference", delivery, task_record(task), webhook_url=task.webhookURL)


class Dispatcher:
    def __init__(self, services: Context, base_url: str | None = None) -> None:
        """`base_url`: the server's URL as this client reached it (for the imageURL of uploads)."""
        self._services = services
        self._base_url = (base_url or public_base_url(services.settings)).rstrip("/")

    @property
    def tasks(self) -> Tasks:
        return self._services.tasks

    async def run_array(self, principal: Principal, raw_tasks: list[Any]) -> ArrayReply:
        results = await asyncio.gather(
            *(self.run_task(principal, raw) for raw in raw_tasks), return_exceptions=True
        )
        data: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        statuses: list[int] = []
        retry_after: float | None = None
        for raw, result in zip(raw_tasks, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                if isinstance(result, RateLimited):
                    retry_after = max(retry_after or 0.0, result.retry_after_s)
                errors.append(error_item(result, task_type=task_type_of(raw), task_uuid=task_uuid_of(raw)))
                statuses.append(status_of(result))
            else:
                data.extend(result)
        status = 200 if data or not statuses else statuses[0]
        return ArrayReply(data, errors, status, retry_after)

    async def run_task(self, principal: Principal, raw: Any) -> list[dict[str, Any]]:
        """One task of an array, counted in the metrics by its outcome."""
        task_type = task_type_of(raw) or "unknown"
        try:
            items = await self._run_task(principal, raw)
        except KimiserveError as exc:
            self._services.metrics.request(PROTOCOL, task_type, exc.code)
            raise
        except Exception:
            self._services.metrics.request(PROTOCOL, task_type, "internalServerError")
            raise
        self._services.metrics.request(PROTOCOL, task_type, "success")
        return items

    async def _run_task(self, principal: Principal, raw: Any) -> list[dict[str, Any]]:
        task = parse_task(raw)
        if isinstance(task, PingTask):
            return [{"taskType": "ping", "pong": True}]
        if isinstance(task, TextInferenceTask):
            return await self.text_inference(principal, task)
        if isinstance(task, GetResponseTask):
            authorize(principal, "tasks:read")
            return await self.get_response(principal, task.taskUUID)
        if isinstance(task, GetTaskDetailsTask):
            authorize(principal, "tasks:read")
            return await self.get_task_details(principal, task.taskUUID)
        if isinstance(task, ImageUploadTask):
            authorize(principal, "media:upload")
            return await self.image_upload(principal, task)
        return []  # authentication: already handled by the transport

    async def call(self, task: TextInferenceTask) -> Call:
        """The task as the front door takes it, once its webhook URL is known to be reachable."""
        call: Call = translate.to_call(task)
        if task.webhookURL is not None:
            try:
                await self._services.fetcher.check_url(task.webhookURL)
            except FetchError as exc:
                raise InvalidRequest(
                    f"webhookURL: {exc}", code="invalidWebhookURL", parameter="webhookURL"
                ) from None
        return call

    async def text_inference(self, principal: Principal, task: TextInferenceTask) -> list[dict[str, Any]]:
        if task.deliveryMethod == "stream":
            raise UnsupportedFeature(
                "deliveryMethod 'stream' must be the only task of its request.", parameter="deliveryMethod"
            )
        spec = task_spec(task)
        render = Render(
            item=lambda result: translate.result_item(task, result),
            error=lambda err: {
                "errors": [error_item(err, task_type="textInference", task_uuid=task.taskUUID)]
            },
        )
        items = await self._services.delivery.deliver(principal, await self.call(task), spec, render)
        return items if items is not None else [{"taskType": "textInference", "taskUUID": task.taskUUID}]

    async def image_upload(self, principal: Principal, task: ImageUploadTask) -> list[dict[str, Any]]:
        """Store the image under a new imageUUID, served back at /media/<imageUUID>."""
        image = task.image
        shown = (
            image if image.startswith(("http://", "https://")) else f"<{len(image)} characters of image data>"
        )
        record = {"taskType": "imageUpload", "taskUUID": task.taskUUID, "image": shown}
        await self.tasks.begin(principal, task.taskUUID, "imageUpload", "sync", record)

        async def upload() -> list[dict[str, Any]]:
            stored = await self._services.media.upload(principal.account_id, image, parameter="image")
            return [
                {
                    "taskType": "imageUpload",
                    "taskUUID": task.taskUUID,
                    "imageUUID": stored.id,
                    "imageURL": f"{self._base_url}/media/{stored.id}",
                }
            ]

        return await self.tasks.track(task.taskUUID, upload())

    async def get_response(self, principal: Principal, task_uuid: str) -> list[dict[str, Any]]:
        row = await self.tasks.wait(principal, task_uuid, self._services.settings.get_response_wait_s)
        if row.status == "processing":
            return [{"taskType": row.task_type, "taskUUID": task_uuid, "status": "processing"}]
        if row.status == "error":
            raise stored_error(row.error or {})
        return list(row.results or [])

    async def get_task_details(self, principal: Principal, task_uuid: str) -> list[dict[str, Any]]:
        row = await self.tasks.get(principal, task_uuid)
        response: dict[str, Any] = {"status": row.status}
        if row.results is not None:
            response["data"] = row.results
        if row.error is not None:
            response["errors"] = [
                error_item(stored_error(row.error), task_type=row.task_type, task_uuid=task_uuid)
            ]
        return [
            {
                "taskType": "getTaskDetails",
                "taskUUID": task_uuid,
                "request": [row.request],
                "response": response,
            }
        ]
