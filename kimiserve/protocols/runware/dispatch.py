"""taskType → handler, for task arrays from HTTP (and, later, the WebSocket).

Each task succeeds or fails on its own: a handler returns its data items or raises, and the
caller renders the error for that task alone.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from kimiserve.domain.inference import fan_out
from kimiserve.domain.tasks import Tasks
from kimiserve.engines.registry import ServedModel
from kimiserve.errors import KimiserveError, UnsupportedFeature
from kimiserve.platform.api_keys import Principal
from kimiserve.protocols.runware import translate
from kimiserve.protocols.runware.errors import error_item, status_of, to_error
from kimiserve.protocols.runware.validation import parse_task, task_type_of, task_uuid_of
from kimiserve.services import Services

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


class Dispatcher:
    def __init__(self, services: Services) -> None:
        self._services = services

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
        if task_type == "authentication":
            return []  # already handled by the transport
        raise UnsupportedFeature(
            f"taskType {task_type!r} is not supported here.", code="unsupportedTaskType", parameter="taskType"
        )

    def prepare(self, wire: dict[str, Any]) -> ServedModel:
        """Checks shared by every delivery, before the task is recorded."""
        model = self._services.registry.resolve(wire["model"])
        translate.refuse_unsupported(wire)
        return model

    async def text_inference(self, principal: Principal, wire: dict[str, Any]) -> list[dict[str, Any]]:
        model = self.prepare(wire)
        delivery = wire.get("deliveryMethod", "sync")
        if delivery == "stream":
            raise UnsupportedFeature(
                "deliveryMethod 'stream' must be the only task of its request.", parameter="deliveryMethod"
            )
        await self._services.inference.admit(principal)
        task_uuid = wire["taskUUID"]
        await self.tasks.begin(principal, task_uuid, "textInference", delivery, wire)
        work = self.execute(principal, model, wire)
        if delivery == "async":
            self.tasks.spawn(self._background(work))
            return [{"taskType": "textInference", "taskUUID": task_uuid}]
        return await work

    async def execute(
        self, principal: Principal, model: ServedModel, wire: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Run the N generations, store the outcome durably, return the items (or raise)."""
        task_uuid = wire["taskUUID"]
        try:
            base = translate.to_generation_request(wire, model.id)
            generations = fan_out(base, wire.get("seed"), wire.get("numberResults", 1))
            results = await self._services.inference.run_all(
                principal, model, generations, request_id=task_uuid, protocol=PROTOCOL
            )
        except BaseException as exc:
            await asyncio.shield(self.tasks.fail(task_uuid, error_record(exc)))
            raise
        items = [translate.result_item(wire, r) for r in results]
        await self.tasks.complete(task_uuid, items)
        return items

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
