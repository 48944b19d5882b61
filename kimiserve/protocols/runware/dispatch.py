"""taskType → handler, for task arrays from HTTP and the WebSocket.

Each task succeeds or fails on its own: a handler returns its data items or raises, and the
caller renders the error for that task alone. Deliveries: `sync` answers with the results,
`async` with an acknowledgement (results via getResponse), and a task with `webhookURL` is
acknowledged the same way and then POSTs each generation to that URL through the outbox.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from kimiserve.delivery.webhooks import delivery_id
from kimiserve.domain.inference import Generation, fan_out
from kimiserve.domain.tasks import INTERRUPTED, Tasks
from kimiserve.engines.registry import ServedModel
from kimiserve.errors import InvalidRequest, KimiserveError, UnsupportedFeature
from kimiserve.media.fetch import FetchError
from kimiserve.media.resolve import resolve_images
from kimiserve.platform.api_keys import Principal
from kimiserve.protocols.runware import translate
from kimiserve.protocols.runware.errors import error_item, status_of, to_error
from kimiserve.protocols.runware.validation import parse_task, task_type_of, task_uuid_of
from kimiserve.services import Services
from kimiserve.settings import Settings

log = logging.getLogger(__name__)

PROTOCOL = "runware"


@dataclass(frozen=True)
class Outcome:
    """The reply to a task array: data items, error items, and the HTTP status."""

    data: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    status: int

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.data or not self.errors:
            out["data"] = self.data
        if self.errors:
            out["errors"] = self.errors
        return out


def stored_error(error: dict[str, Any]) -> KimiserveError:
    return KimiserveError(
        error.get("message", "The task failed."),
        code=error.get("code", "inferenceError"),
        parameter=error.get("parameter"),
        status=int(error.get("status", 500)),
    )


def error_record(exc: BaseException) -> dict[str, Any]:
    err = to_error(exc)
    return {"code": err.code, "message": err.message, "parameter": err.parameter, "status": err.status}


def public_base_url(settings: Settings) -> str:
    """Where clients reach this server, when the transport cannot tell (no request to look at)."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = "localhost" if settings.host in ("0.0.0.0", "::", "") else settings.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.port}"


class Dispatcher:
    def __init__(self, services: Services, base_url: str | None = None) -> None:
        """`base_url`: the server's URL as this client reached it (for the imageURL of uploads)."""
        self._services = services
        self._base_url = (base_url or public_base_url(services.settings)).rstrip("/")

    @property
    def tasks(self) -> Tasks:
        return self._services.platform.tasks

    async def run_array(self, principal: Principal, raw_tasks: list[Any]) -> Outcome:
        results = await asyncio.gather(
            *(self.run_task(principal, raw) for raw in raw_tasks), return_exceptions=True
        )
        data: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        statuses: list[int] = []
        for raw, result in zip(raw_tasks, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                errors.append(error_item(result, task_type=task_type_of(raw), task_uuid=task_uuid_of(raw)))
                statuses.append(status_of(result))
            else:
                data.extend(result)
        status = 200 if data or not statuses else statuses[0]
        return Outcome(data, errors, status)

    async def run_task(self, principal: Principal, raw: Any) -> list[dict[str, Any]]:
        task_type = task_type_of(raw)
        if task_type == "ping":
            return [{"taskType": "ping", "pong": True}]
        parse_task(raw)
        wire: dict[str, Any] = raw
        if task_type == "textInference":
            return await self.text_inference(principal, wire)
        if task_type == "getResponse":
            return await self.get_response(principal, wire["taskUUID"])
        if task_type == "getTaskDetails":
            return await self.get_task_details(principal, wire["taskUUID"])
        if task_type == "imageUpload":
            return await self.image_upload(principal, wire)
        if task_type == "authentication":
            return []  # already handled by the transport
        raise UnsupportedFeature(
            f"taskType {task_type!r} is not supported here.", code="unsupportedTaskType", parameter="taskType"
        )

    def prepare(self, wire: dict[str, Any], *, resolves_images: bool = False) -> ServedModel:
        """Checks shared by every delivery, before the task is recorded.

        A caller that passes `resolves_images` must call `resolve_images` next.
        """
        model = self._services.registry.resolve(wire["model"])
        translate.refuse_unsupported(wire, resolves_images=resolves_images)
        return model

    async def resolve_images(
        self, principal: Principal, wire: dict[str, Any], model: ServedModel
    ) -> tuple[str, ...]:
        """The task's `inputs.images` as data URIs; an image that cannot be had names its index."""
        refs = (wire.get("inputs") or {}).get("images") or []
        if not refs:
            return ()
        images = await resolve_images(self._services.media, principal.account_id, refs)
        if not model.engine.capabilities.vision:
            served = model.stand_in_for or model.id
            raise UnsupportedFeature(
                f"The served model ({served}) has no image input; send the task without inputs.images.",
                parameter="inputs.images",
            )
        return tuple(image.data_uri() for image in images)

    async def check_webhook(self, url: str) -> None:
        try:
            await self._services.fetcher.check_url(url)
        except FetchError as exc:
            raise InvalidRequest(
                f"webhookURL: {exc}", code="invalidWebhookURL", parameter="webhookURL"
            ) from None

    async def text_inference(self, principal: Principal, wire: dict[str, Any]) -> list[dict[str, Any]]:
        model = self.prepare(wire, resolves_images=True)
        delivery = wire.get("deliveryMethod", "sync")
        if delivery == "stream":
            raise UnsupportedFeature(
                "deliveryMethod 'stream' must be the only task of its request.", parameter="deliveryMethod"
            )
        images = await self.resolve_images(principal, wire, model)
        if wire.get("webhookURL") is not None:
            await self.check_webhook(wire["webhookURL"])
            delivery = "webhook"
        await self._services.inference.admit(principal)
        task_uuid = wire["taskUUID"]
        await self.tasks.begin(principal, task_uuid, "textInference", delivery, wire)
        if delivery == "webhook":
            self.tasks.spawn(self._background(self.execute_webhook(principal, model, wire, images)))
            return [{"taskType": "textInference", "taskUUID": task_uuid}]
        work = self.execute(principal, model, wire, images)
        if delivery == "async":
            self.tasks.spawn(self._background(work))
            return [{"taskType": "textInference", "taskUUID": task_uuid}]
        return await work

    def generations(
        self, wire: dict[str, Any], model: ServedModel, images: tuple[str, ...]
    ) -> list[Generation]:
        base = translate.to_generation_request(wire, model.id, images)
        return fan_out(base, wire.get("seed"), wire.get("numberResults", 1))

    async def execute(
        self, principal: Principal, model: ServedModel, wire: dict[str, Any], images: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        """Run the N generations, store the outcome durably, return the items (or raise)."""
        task_uuid = wire["taskUUID"]
        try:
            generations = self.generations(wire, model, images)
            results = await self._services.inference.run_all(
                principal, model, generations, request_id=task_uuid, protocol=PROTOCOL
            )
        except asyncio.CancelledError:  # shutting down: the task was cut off, not failed
            await asyncio.shield(self.tasks.fail(task_uuid, INTERRUPTED))
            raise
        except Exception as exc:
            await self.tasks.fail(task_uuid, error_record(exc))
            raise
        items = [translate.result_item(wire, r) for r in results]
        await self.tasks.complete(task_uuid, items)
        return items

    async def execute_webhook(
        self, principal: Principal, model: ServedModel, wire: dict[str, Any], images: tuple[str, ...]
    ) -> None:
        """Each generation is enqueued for its webhook POST as soon as it ends, success or error.

        A shutdown mid-run leaves the task `processing`: the next start-up sends its receiver a
        `taskInterrupted` error (services.notify_interrupted_webhooks) and ends the task.
        """
        task_uuid = wire["taskUUID"]
        account_id = principal.account_id
        url = wire["webhookURL"]
        webhooks = self._services.webhooks

        async def one(index: int, generation: Generation) -> dict[str, Any]:
            try:
                result = await self._services.inference.run(
                    principal, model, generation, request_id=task_uuid, protocol=PROTOCOL
                )
            except Exception as exc:
                error = error_item(exc, task_type="textInference", task_uuid=task_uuid)
                await webhooks.enqueue(
                    delivery_id(task_uuid, index), account_id, task_uuid, url, {"errors": [error]}
                )
                raise
            item = translate.result_item(wire, result)
            await webhooks.enqueue(
                delivery_id(task_uuid, index), account_id, task_uuid, url, {"data": [item]}
            )
            return item

        try:
            generations = self.generations(wire, model, images)
        except Exception as exc:
            error = error_item(exc, task_type="textInference", task_uuid=task_uuid)
            await webhooks.enqueue(
                delivery_id(task_uuid, "error"), account_id, task_uuid, url, {"errors": [error]}
            )
            await self.tasks.fail(task_uuid, error_record(exc))
            raise
        outcomes = await asyncio.gather(
            *(one(i, g) for i, g in enumerate(generations)), return_exceptions=True
        )
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if any(isinstance(f, asyncio.CancelledError) for f in failures):
            raise asyncio.CancelledError
        if failures:
            await self.tasks.fail(task_uuid, error_record(failures[0]))
            raise failures[0]
        await self.tasks.complete(task_uuid, [o for o in outcomes if not isinstance(o, BaseException)])

    async def image_upload(self, principal: Principal, wire: dict[str, Any]) -> list[dict[str, Any]]:
        """Store the image under a new imageUUID, served back at /media/<imageUUID>."""
        task_uuid = wire["taskUUID"]
        image: str = wire["image"]
        shown = (
            image if image.startswith(("http://", "https://")) else f"<{len(image)} characters of image data>"
        )
        record = {"taskType": "imageUpload", "taskUUID": task_uuid, "image": shown}
        await self.tasks.begin(principal, task_uuid, "imageUpload", "sync", record)
        try:
            stored = await self._services.media.upload(principal.account_id, image, parameter="image")
        except BaseException as exc:
            await asyncio.shield(self.tasks.fail(task_uuid, error_record(exc)))
            raise
        item = {
            "taskType": "imageUpload",
            "taskUUID": task_uuid,
            "imageUUID": stored.id,
            "imageURL": f"{self._base_url}/media/{stored.id}",
        }
        await self.tasks.complete(task_uuid, [item])
        return [item]

    async def _background(self, work: Any) -> None:
        try:
            await work
        except KimiserveError:
            pass  # stored with the task; getResponse reports it
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("async task failed")

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
