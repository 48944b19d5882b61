"""POST / and POST /v1: a JSON array of tasks (or one streaming task, answered as SSE)."""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from kimiserve.errors import InvalidRequest, KimiserveError
from kimiserve.http.auth import authenticate, caller, services_of
from kimiserve.http.body import read_json
from kimiserve.http.encoding import SafeJSONResponse
from kimiserve.protocols.runware.dispatch import Dispatcher
from kimiserve.protocols.runware.errors import body_error_items, error_item, retry_after_header, status_of
from kimiserve.protocols.runware.stream import stream_task
from kimiserve.protocols.runware.validation import task_type_of, task_uuid_of


def _error_response(exc: BaseException, tasks: list[Any]) -> SafeJSONResponse:
    """One error per task (so clients can route it by taskUUID), or one for an empty array."""
    items = [error_item(exc, task_type=task_type_of(t), task_uuid=task_uuid_of(t)) for t in tasks] or [
        error_item(exc, task_type=None, task_uuid=None)
    ]
    return SafeJSONResponse({"errors": items}, status_code=status_of(exc), headers=retry_after_header(exc))


def _split_auth(body: Any) -> tuple[str | None, list[Any]]:
    if not isinstance(body, list):  # an empty array is schema-valid: nothing to do, `{"data": []}`
        raise InvalidRequest("The request body must be a JSON array of tasks.", parameter="body")
    if not body:
        return None, body
    first = body[0]
    if isinstance(first, dict) and first.get("taskType") == "authentication":
        key = first.get("apiKey")
        return (key if isinstance(key, str) else ""), body[1:]
    return None, body


async def post_tasks(request: Request) -> Response:
    services = services_of(request)
    tasks: list[Any] = []
    try:
        body = await read_json(request, services.settings.max_body_bytes)
    except KimiserveError as exc:  # unreadable: the body is refused as a whole, naming the place
        return SafeJSONResponse({"errors": body_error_items(exc, None)}, status_code=status_of(exc))
    try:
        body_key, tasks = _split_auth(body)
        principal = await (
            authenticate(services, body_key) if body_key is not None else caller(services, request)
        )
    except KimiserveError as exc:
        return _error_response(exc, tasks)
    if len(tasks) == 1 and isinstance(tasks[0], dict) and tasks[0].get("deliveryMethod") == "stream":
        return await stream_task(services, principal, tasks[0])
    outcome = await Dispatcher(services, base_url=str(request.base_url)).run_array(principal, tasks)
    headers = {"Retry-After": str(math.ceil(outcome.retry_after_s))} if outcome.retry_after_s else {}
    return SafeJSONResponse(outcome.body(), status_code=outcome.status, headers=headers)


def routes() -> list[BaseRoute]:
    return [Route("/", post_tasks, methods=["POST"]), Route("/v1", post_tasks, methods=["POST"])]
