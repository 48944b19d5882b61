"""taskType → handler, for task arrays from HTTP and the WebSocket.

Each task succeeds or fails on its own: a handler returns its data items or raises, and the
caller renders the error for that task alone. Every handler works on the validated, typed
task; a textInference goes through the one pipeline (`domain/pipeline.py`) and its lifecycle
through `domain/tasks.py`. Deliveries: `sync` answers with the results, `async` with an
acknowledgement (results via getResponse), and a task with `webhookURL` is acknowledged the
same way and then POSTs each generation to that URL through the outbox.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from kimiserve.delivery.webhooks import delivery_id
from kimiserve.domain.pipeline import Admission
from kimiserve.domain.tasks import INTERRUPTED, Tasks, stored_error
from kimiserve.engines.registry import ServedModel
from kimiserve.errors import (
    InvalidRequest,
    KimiserveError,
    RateLimited,
    UnsupportedFeature,
    as_kimiserve_error,
)
from kimiserve.http.context import Context
from kimiserve.media.fetch import FetchError
from kimiserve.media.resolve import resolve_media
from kimiserve.platform.api_keys import Principal
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

PROTOCOL = "runware"


@dataclass(frozen=True)
class Outcome:
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


class Dispatcher:
    def __init__(self, services: Context, base_url: str | None = None) -> None:
        """`base_url`: the server's URL as this client reached it (for the imageURL of uploads)."""
        self._services = services
        self._base_url = (base_url or public_base_url(services.settings)).rstrip("/")

    @property
    def tasks(self) -> Tasks:
        return self._services.tasks

    async def run_array(self, principal: Principal, raw_tasks: list[Any]) -> Outcome:
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
        return Outcome(data, errors, status, retry_after)

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
        authorize = self._services.pipeline.authorize
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

    def prepare(self, principal: Principal, task: TextInferenceTask) -> ServedModel:
        """Checks shared by every delivery, before anything is fetched, held or recorded."""
        pipeline = self._services.pipeline
        pipeline.authorize(principal, "inference")
        model = pipeline.model(principal, task.model)
        translate.refuse_unsupported(task, model.engine.capabilities, resolves_media=True)
        if not model.engine.capabilities.vision and task.inputs is not None:
            served = model.stand_in_for or model.id
            for kind, refs in (("images", task.inputs.images), ("videos", task.inputs.videos)):
                if refs:
                    raise UnsupportedFeature(
                        f"The served model ({served}) has no {kind[:-1]} input; "
                        f"send the task without inputs.{kind}.",
                        parameter=f"inputs.{kind}",
                    )
        return model

    async def resolve_inputs(
        self, principal: Principal, task: TextInferenceTask
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The task's `inputs.images` and `inputs.videos` as data URIs; one that cannot be had
        names its index."""
        inputs = task.inputs
        if inputs is None or not (inputs.images or inputs.videos):
            return (), ()
        media, account = self._services.media, principal.account_id
        images = await resolve_media(media, account, inputs.images or [], parameter="inputs.images")
        videos = await resolve_media(
            media, account, inputs.videos or [], parameter="inputs.videos", kind="video"
        )
        return tuple(m.data_uri() for m in images), tuple(m.data_uri() for m in videos)

    async def admit(self, principal: Principal, task: TextInferenceTask) -> Admission:
        """Everything before a textInference runs: checks, images, webhook URL, then the pipeline's
        admission (limits and credit). The caller owns the returned admission."""
        model = self.prepare(principal, task)
        images, videos = await self.resolve_inputs(principal, task)
        if task.webhookURL is not None:
            try:
                await self._services.fetcher.check_url(task.webhookURL)
            except FetchError as exc:
                raise InvalidRequest(
                    f"webhookURL: {exc}", code="invalidWebhookURL", parameter="webhookURL"
                ) from None
        request = translate.to_generation_request(task, model.id, images, videos)
        return await self._services.pipeline.admit(
            principal,
            model,
            request,
            n=task.numberResults,
            seed=task.seed,
            protocol=PROTOCOL,
            request_id=task.taskUUID,
            builtin_tools=translate.builtin_tools(task),
        )

    async def begin(self, principal: Principal, task: TextInferenceTask, admission: Admission) -> str:
        """Record the admitted task (409 for a reused taskUUID, its hold released); its delivery."""
        delivery = "webhook" if task.webhookURL is not None else task.deliveryMethod
        try:
            await self.tasks.begin(principal, task.taskUUID, "textInference", delivery, task_record(task))
        except BaseException:
            await admission.aclose()
            raise
        return delivery

    async def text_inference(self, principal: Principal, task: TextInferenceTask) -> list[dict[str, Any]]:
        if task.deliveryMethod == "stream":
            raise UnsupportedFeature(
                "deliveryMethod 'stream' must be the only task of its request.", parameter="deliveryMethod"
            )
        admission = await self.admit(principal, task)
        delivery = await self.begin(principal, task, admission)
        ack = [{"taskType": "textInference", "taskUUID": task.taskUUID}]
        if delivery == "webhook":
            self.tasks.spawn(self.execute_webhook(admission, task))
            return ack
        work = self.execute(admission, task)
        if delivery == "async":
            self.tasks.spawn(work)
            return ack
        return await work

    async def execute(self, admission: Admission, task: TextInferenceTask) -> list[dict[str, Any]]:
        """Run the N generations, store the outcome durably, return the items (or raise)."""

        async def items() -> list[dict[str, Any]]:
            return [translate.result_item(task, r) for r in await admission.run_all()]

        async with admission:
            return await self.tasks.track(task.taskUUID, items())

    async def execute_webhook(self, admission: Admission, task: TextInferenceTask) -> None:
        """Each generation is enqueued for its webhook POST as soon as it ends, success or error;
        a shutdown mid-run enqueues the `taskInterrupted` error (the outbox is durable)."""
        task_uuid = task.taskUUID
        account_id = admission.principal.account_id
        url = task.webhookURL
        assert url is not None
        webhooks = self._services.webhooks

        async def send(key: int | str, payload: dict[str, Any]) -> None:
            await webhooks.enqueue(delivery_id(task_uuid, key), account_id, task_uuid, url, payload)

        async def one(index: int) -> dict[str, Any]:
            try:
                result = await admission.run(index)
            except Exception as exc:
                err = as_kimiserve_error(exc)
                await send(
                    index, {"errors": [error_item(err, task_type="textInference", task_uuid=task_uuid)]}
                )
                raise err from exc
            item = translate.result_item(task, result)
            await send(index, {"data": [item]})
            return item

        async def items() -> list[dict[str, Any]]:
            try:
                outcomes = await asyncio.gather(
                    *(one(i) for i in range(len(admission.generations))), return_exceptions=True
                )
            except asyncio.CancelledError:
                error = error_item(INTERRUPTED, task_type="textInference", task_uuid=task_uuid)
                await asyncio.shield(send("error", {"errors": [error]}))
                raise
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
            return [o for o in outcomes if not isinstance(o, BaseException)]

        async with admission:
            await self.tasks.track(task_uuid, items())

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
