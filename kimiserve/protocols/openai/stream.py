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

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from starlette.responses import StreamingResponse

from kimiserve.domain.pipeline import Admission
from kimiserve.domain.types import Finished, PipelineEvent, ReasoningDelta, TextDelta, ToolCallEvent, Usage
from kimiserve.errors import KimiserveError
from kimiserve.http.context import Context
from kimiserve.http.request_id import current_request_id
from kimiserve.http.sse import frame, primed, with_keepalive
from kimiserve.protocols.openai import translate
from kimiserve.protocols.openai.errors import render

PROTOCOL = "openai"


async def merge(
    sources: Sequence[AsyncIterator[PipelineEvent]],
) -> AsyncIterator[tuple[int, PipelineEvent]]:
    """The events of several streams as they come, each with its source's index.

    The first error ends the merge; closing it (or an error) closes every source.
    """
    if len(sources) == 1:  # the usual case (n = 1): no task per event
        try:
            async for event in sources[0]:
                yield 0, event
        finally:
            await sources[0].aclose()  # type: ignore[attr-defined]
        return
    pending: dict[asyncio.Future[PipelineEvent], int] = {
        asyncio.ensure_future(anext(s)): i for i, s in enumerate(sources)
    }
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=lambda t: pending[t]):
                index = pending.pop(task)
                try:
                    event = task.result()
                except StopAsyncIteration:
                    continue
                pending[asyncio.ensure_future(anext(sources[index]))] = index
                yield index, event
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for source in sources:
            await source.aclose()  # type: ignore[attr-defined]


def rate_limit_headers(admission: Admission) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers, for the limits the request was admitted under."""
    headers: dict[str, str] = {}
    for what, state in (("requests", admission.permit.requests), ("tokens", admission.permit.tokens)):
        if state is not None:
            headers[f"x-ratelimit-limit-{what}"] = str(state.limit)
            headers[f"x-ratelimit-remaining-{what}"] = str(state.remaining)
            headers[f"x-ratelimit-reset-{what}"] = f"{state.reset_s:.3f}s"
    return headers


async def open_stream(
    services: Context,
    admission: Admission,
    reply: translate.Reply,
    *,
    include_usage: bool,
    names: Mapping[str, str],
) -> StreamingResponse:
    """Start the generations and wait for the first event (raising early errors), then stream.
    The stream owns the admission from here: its end (or the client leaving) closes it."""
    try:
        sources = [admission.stream(i) for i in range(len(admission.generations))]
        events = await primed(merge(sources), services.settings.keepalive_s)
    except BaseException:
        await admission.aclose()
        raise
    outcome = Outcome()
    frames = _frames(
        reply, events, len(admission.generations), include_usage=include_usage, names=names, outcome=outcome
    )
    body = _owned(frames, services, admission, outcome)
    return StreamingResponse(
        with_keepalive(body, services.settings.keepalive_s),
        media_type="text/event-stream",
        headers={
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **rate_limit_headers(admission),
        },
    )


@dataclass
class Outcome:
    """How a stream ended, for the metrics: `success`, an error code, or the client leaving."""

    status: str = "clientDisconnected"


async def _owned(
    frames: AsyncGenerator[bytes, None], services: Context, admission: Admission, outcome: Outcome
) -> AsyncGenerator[bytes, None]:
    """The frames, and when they end (or the client leaves) the admission closed and counted."""
    try:
        async with contextlib.aclosing(frames):
            async for data in frames:
                yield data
    finally:
        await admission.aclose()
        services.metrics.request(PROTOCOL, "chat.completion", outcome.status)


async def _frames(
    reply: translate.Reply,
    events: AsyncIterator[tuple[int, PipelineEvent]],
    n: int,
    *,
    include_usage: bool,
    names: Mapping[str, str],
    outcome: Outcome | None = None,
) -> AsyncGenerator[bytes, None]:
    def chunk(index: int, delta: dict[str, object], finish: str | None = None) -> bytes:
        return frame(translate.chunk(reply, index, delta, finish, with_usage=include_usage))

    outcome = outcome if outcome is not None else Outcome()
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
