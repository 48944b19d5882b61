"""deliveryMethod "stream": one textInference task answered as SSE.

Errors found before the first event are normal HTTP errors; once the stream has started, an
error is one in-band frame carrying both `error` (SDK 0.5.24) and `errors` (newer clients).
A client leaving mid-stream cancels generation; leaving after the terminal chunk is normal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response, StreamingResponse

from kimiserve.domain.inference import Accumulator, Generation
from kimiserve.domain.types import Event, ReasoningDelta, TextDelta
from kimiserve.engines.registry import ServedModel
from kimiserve.errors import InvalidRequest
from kimiserve.http.encoding import SafeJSONResponse as JSONResponse
from kimiserve.http.sse import frame, primed, with_keepalive
from kimiserve.platform.api_keys import Principal
from kimiserve.protocols.runware import translate
from kimiserve.protocols.runware.dispatch import PROTOCOL, Dispatcher, error_record
from kimiserve.protocols.runware.errors import error_item, status_of
from kimiserve.protocols.runware.validation import parse_task, task_type_of, task_uuid_of
from kimiserve.services import Services

CANCELLED = {
    "code": "clientDisconnected",
    "message": "The client left before the stream ended.",
    "status": 400,
}


async def stream_task(services: Services, principal: Principal, raw: Any) -> Response:
    tasks = services.platform.tasks
    begun = False
    try:
        parse_task(raw)
        wire: dict[str, Any] = raw
        dispatcher = Dispatcher(services)
        model = dispatcher.prepare(wire, resolves_images=True)
        if wire.get("numberResults", 1) != 1:
            raise InvalidRequest(
                "deliveryMethod 'stream' delivers one result: numberResults must be 1.",
                parameter="numberResults",
                code="invalidNumberResults",
            )
        images = await dispatcher.resolve_images(principal, wire, model)
        await services.inference.admit(principal)
        await tasks.begin(principal, wire["taskUUID"], "textInference", "stream", wire)
        begun = True
        [generation] = dispatcher.generations(wire, model, images)
        events = services.inference.stream(
            principal, model, generation, request_id=wire["taskUUID"], protocol=PROTOCOL
        )
        events = await primed(events, services.settings.keepalive_s)
    except Exception as exc:
        if begun:
            await tasks.fail(raw["taskUUID"], error_record(exc))
        item = error_item(exc, task_type=task_type_of(raw), task_uuid=task_uuid_of(raw))
        return JSONResponse({"errors": [item]}, status_code=status_of(exc))
    body = _frames(services, model, wire, generation, events)
    return StreamingResponse(
        with_keepalive(body, services.settings.keepalive_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _frames(
    services: Services,
    model: ServedModel,
    wire: dict[str, Any],
    generation: Generation,
    events: AsyncIterator[Event],
) -> AsyncIterator[bytes]:
    tasks = services.platform.tasks
    task_uuid = wire["taskUUID"]
    acc = Accumulator(generation.seed, model)
    ended = False
    try:
        async for event in events:
            acc.add(event)
            if isinstance(event, TextDelta) and event.text:
                yield frame(translate.delta_chunk(task_uuid, event.text))
            elif isinstance(event, ReasoningDelta) and event.text:
                yield frame(translate.delta_chunk(task_uuid, event.text, reasoning=True))
        result = acc.result()
        await tasks.complete(task_uuid, [translate.result_item(wire, result)])
        ended = True
        yield frame(translate.terminal_chunk(wire, result))
        yield frame("[DONE]")
    except Exception as exc:
        ended = True
        await tasks.fail(task_uuid, error_record(exc))
        item = error_item(exc, task_type="textInference", task_uuid=task_uuid)
        yield frame({"taskUUID": task_uuid, "taskType": "textInference", "error": item, "errors": [item]})
    finally:
        if not ended:  # the client left mid-stream: record it without awaiting in a cancelled scope
            tasks.spawn(tasks.fail(task_uuid, CANCELLED))
        await events.aclose()  # type: ignore[attr-defined]
