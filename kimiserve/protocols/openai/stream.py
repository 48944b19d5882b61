"""`stream: true`: chat.completion.chunk events over SSE, then `data: [DONE]`.

Per choice: a role chunk, content / reasoning_content / tool_calls deltas, a finish chunk.
With `n` > 1 the N generations run together and their chunks interleave as they come, each
tagged with its choice index. With `stream_options.include_usage`, a last chunk with empty
`choices` carries the usage of all of them. Errors before the first event are normal HTTP
errors (`primed`); after it, one in-band `{"error": {...}}` event ends the stream. A client
leaving mid-stream closes this generator, which closes the engines' streams. The built-in
tools' events (`BuiltinToolCall`, `BuiltinToolResult`) are not rendered: the OpenAI seeds name no
built-in tools, so no OpenAI request runs them.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping

from starlette.responses import StreamingResponse

from kimiserve.domain.inference import Admitted, Started
from kimiserve.domain.types import Finished, PipelineEvent, ReasoningDelta, TextDelta, ToolCallEvent, Usage
from kimiserve.errors import KimiserveError
from kimiserve.http.context import Context
from kimiserve.http.request_id import current_request_id
from kimiserve.http.sse import StreamStatus, counted, frame, primed, with_keepalive
from kimiserve.protocols.openai import translate
from kimiserve.protocols.openai.errors import render

PROTOCOL = translate.PROTOCOL


def rate_limit_headers(admitted: Admitted) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers, for the limits the request was admitted under."""
    headers: dict[str, str] = {}
    for what, state in (("requests", admitted.requests), ("tokens", admitted.tokens)):
        if state is not None:
            headers[f"x-ratelimit-limit-{what}"] = str(state.limit)
            headers[f"x-ratelimit-remaining-{what}"] = str(state.remaining)
            headers[f"x-ratelimit-reset-{what}"] = f"{state.reset_s:.3f}s"
    return headers


async def open_stream(
    services: Context,
    started: Started,
    reply: translate.Reply,
    *,
    include_usage: bool,
    names: Mapping[str, str],
) -> StreamingResponse:
    """Wait for the first event (raising early errors), then stream. The stream's end (or the
    client leaving) closes the events, which settles or releases the request."""
    events = await primed(started.events, services.settings.keepalive_s)  # closes them if it raises
    admitted = started.admitted
    outcome = StreamStatus()
    frames = _frames(
        reply, events, len(admitted.seeds), include_usage=include_usage, names=names, outcome=outcome
    )
    body = counted(
        frames, lambda status: services.metrics.request(PROTOCOL, "chat.completion", status), outcome
    )
    return StreamingResponse(
        with_keepalive(body, services.settings.keepalive_s),
        media_type="text/event-stream",
        headers={
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **rate_limit_headers(admitted),
        },
    )


async def _frames(
    reply: translate.Reply,
    events: AsyncIterator[tuple[int, PipelineEvent]],
    n: int,
    *,
    include_usage: bool,
    names: Mapping[str, str],
    outcome: StreamStatus | None = None,
) -> AsyncGenerator[bytes, None]:
    def chunk(index: int, delta: dict[str, object], finish: str | None = None) -> bytes:
        return frame(translate.chunk(reply, index, delta, finish, with_usage=include_usage))

    outcome = outcome if outcome is not None else StreamStatus()
    usages: dict[int, Usage] = {}
    calls = [0] * n
    try:
        for index in range(n):
            yield chunk(index, {"role": "assistant", "content": ""})
        async for index, event in events:
            if isinstance(event, TextDelta) and event.text:
                delta = {"content": event.text}
                yield frame(
                    translate.chunk(
                        reply, index, delta, with_usage=include_usage, token_logprobs=event.logprobs
                    )
                )
            elif isinstance(event, ReasoningDelta) and event.text:
                yield chunk(index, {"reasoning_content": event.text})
            elif isinstance(event, ToolCallEvent):
                for part in translate.tool_call_deltas(event.call, calls[index]):
                    yield chunk(index, {"tool_calls": [part]})
                calls[index] += 1
            elif isinstance(event, Usage):
                usages[index] = event
            elif isinstance(event, Finished):
                yield chunk(index, {}, translate.finish_reason(event.reason))
        if include_usage:
            yield frame(translate.usage_chunk(reply, [usages[i] for i in sorted(usages)]))
        outcome.status = "success"
        yield frame("[DONE]")
    except Exception as exc:
        outcome.status = exc.code if isinstance(exc, KimiserveError) else "internalServerError"
        _, body = render(exc, current_request_id.get() or reply.id, names)
        yield frame(body)
        yield frame("[DONE]")
    finally:
        await events.aclose()  # type: ignore[attr-defined]
