"""deliveryMethod "stream": one textInference task answered as SSE.

Errors found before the first event are normal HTTP errors; once the stream has started, an
error is one in-band frame carrying both `error` (SDK 0.5.24) and `errors` (newer clients).
A client leaving mid-stream cancels generation (the task ends `clientDisconnected` and pays
for what was streamed); leaving after the terminal chunk is normal.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from typing import Any

from starlette.responses import Response, StreamingResponse

from kimiserve.domain.inference import Admitted
from kimiserve.domain.principal import Principal
from kimiserve.domain.results import Accumulator
from kimiserve.domain.types import (
    BuiltinToolCall,
    BuiltinToolResult,
    PipelineEvent,
    ReasoningDelta,
    TextDelta,
    ToolCallEvent,
)
from kimiserve.errors import InvalidRequest
from kimiserve.http.context import Context
from kimiserve.http.encoding import SafeJSONResponse as JSONResponse
from kimiserve.http.sse import frame, primed, with_keepalive
from kimiserve.protocols.runware import translate
from kimiserve.protocols.runware.dispatch import PROTOCOL, Dispatcher, task_record
from kimiserve.protocols.runware.errors import error_item, retry_after_header, status_of
from kimiserve.protocols.runware.models import TextInferenceTask
from kimiserve.protocols.runware.validation import parse_task, task_type_of, task_uuid_of


async def stream_task(services: Context, principal: Principal, raw: Any) -> Response:
    tasks = services.tasks
    begun = False

    async def recorded(_: Admitted) -> None:
        nonlocal begun
        assert isinstance(task, TextInferenceTask)
        await tasks.begin(principal, task.taskUUID, "textInference", "stream", task_record(task))
        begun = True

    try:
        task = parse_task(raw)
        if not isinstance(task, TextInferenceTask):
            raise InvalidRequest(
                "deliveryMethod 'stream' is for textInference tasks.", parameter="deliveryMethod"
            )
        if task.numberResults != 1:
            raise InvalidRequest(
                "deliveryMethod 'stream' delivers one result: numberResults must be 1.",
                parameter="numberResults",
                code="invalidNumberResults",
            )
        call = replace(await Dispatcher(services).call(task), on_admitted=recorded)
        started = await services.inference.start(principal, call)
        events = await primed(started.events, services.settings.keepalive_s)
    except Exception as exc:
        err = await tasks.fail(raw["taskUUID"], exc) if begun else exc
        services.metrics.request(PROTOCOL, "textInference", getattr(err, "code", "internalServerError"))
        item = error_item(err, task_type=task_type_of(raw), task_uuid=task_uuid_of(raw))
        return JSONResponse({"errors": [item]}, status_code=status_of(err), headers=retry_after_header(err))
    body = _frames(services, started.admitted, task, events)
    return StreamingResponse(
        with_keepalive(body, services.settings.keepalive_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _frames(
    services: Context,
    admitted: Admitted,
    task: TextInferenceTask,
    events: AsyncIterator[tuple[int, PipelineEvent]],
) -> AsyncGenerator[bytes, None]:
    tasks = services.tasks
    task_uuid = task.taskUUID
    acc = Accumulator(admitted.seeds[0], admitted.model)
    ended = False
    status = "success"
    try:
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            try:
                async for _, event in events:
                    acc.add(event)
                    if isinstance(event, TextDelta) and event.text:
                        yield frame(translate.delta_chunk(task_uuid, event.text))
                    elif isinstance(event, ReasoningDelta) and event.text:
                        yield frame(translate.delta_chunk(task_uuid, event.text, reasoning=True))
                    elif isinstance(event, ToolCallEvent):
                        yield frame(translate.tool_chunk(task_uuid, event.call))
                    elif isinstance(event, BuiltinToolCall):
                        yield frame(translate.builtin_call_chunk(task_uuid, event.call))
                    elif isinstance(event, BuiltinToolResult):
                        yield frame(translate.builtin_result_chunk(task_uuid, event))
            except Exception as exc:
                ended = True
                err = await tasks.fail(task_uuid, exc)
                status = err.code
                item = error_item(err, task_type="textInference", task_uuid=task_uuid)
                yield frame(
                    {"taskUUID": task_uuid, "taskType": "textInference", "error": item, "errors": [item]}
                )
                return
            result = acc.result()
            await tasks.complete(task_uuid, [translate.result_item(task, result)])
            ended = True
            yield frame(translate.terminal_chunk(task, result))
            yield frame("[DONE]")
    finally:
        if not ended:  # the client left mid-stream (or the server is stopping)
            status = "clientDisconnected"
            tasks.spawn(tasks.cancel(task_uuid, client_left=True))
        services.metrics.request(PROTOCOL, "textInference", status)
