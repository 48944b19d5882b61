"""`stream: true`: the Responses API's typed events over SSE, each with its `sequence_number`.

    response.created → response.in_progress
    per output item, in order (reasoning, then the message, then each function call):
      response.output_item.added
        reasoning: response.content_part.added → response.reasoning_text.delta … →
                   response.reasoning_text.done → response.content_part.done
        message:   response.content_part.added → response.output_text.delta … →
                   response.output_text.done → response.content_part.done
        call:      response.function_call_arguments.delta → .done
      response.output_item.done
    response.completed (or response.incomplete when max_output_tokens cut it)

The reasoning is the model's own text, so it streams as `reasoning_text` (as vLLM's Responses
server does), not as a summary. Errors before the first event are HTTP errors (`primed`); after
it, `response.failed` with the error ends the stream. A client leaving closes the events, which
settles or releases the request. Each frame names its event (`event:`) as OpenAI's do.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import StreamingResponse

from kimiserve.domain.inference import Started
from kimiserve.domain.types import (
    Finished,
    FinishReason,
    PipelineEvent,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from kimiserve.errors import KimiserveError
from kimiserve.http.context import Context
from kimiserve.http.encoding import dumps
from kimiserve.http.request_id import current_request_id
from kimiserve.http.sse import StreamStatus, counted, primed, with_keepalive
from kimiserve.protocols.responses import translate
from kimiserve.protocols.responses.errors import failed_error

PROTOCOL = translate.PROTOCOL
OPERATION = "response"

Save = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class _Open:
    kind: str  # reasoning | message
    id: str
    index: int
    parts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # the text's, when asked


class Renderer:
    """The event sequence of one response: numbers the events, tracks the open item."""

    def __init__(self, reply: translate.Reply) -> None:
        self.reply = reply
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.open: _Open | None = None

    def event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {dumps(payload)}\n\n".encode()

    def _item_id(self, prefix: str) -> str:
        return translate.item_id(prefix, self.reply.id, len(self.output))

    def delta(self, kind: str, text: str, logprobs: Sequence[TokenLogprob] | None = None) -> list[bytes]:
        frames: list[bytes] = []
        if self.open is None or self.open.kind != kind:
            frames += self.close()
            item = _Open(kind, self._item_id("rs" if kind == "reasoning" else "msg"), len(self.output))
            self.open = item
            empty = (
                translate.reasoning_item(item.id, "", "in_progress")
                if kind == "reasoning"
                else translate.message_item(item.id, None, "in_progress")
            )
            self.output.append(empty)
            frames.append(self.event("response.output_item.added", output_index=item.index, item=empty))
            frames.append(
                self.event("response.content_part.added", **self._at(item), part=self._part(kind, ""))
            )
        self.open.parts.append(text)
        self.open.logprobs.extend(logprobs or ())
        if not text:
            return frames
        if kind == "reasoning":
            frames.append(self.event("response.reasoning_text.delta", **self._at(self.open), delta=text))
        else:
            frames.append(
                self.event(
                    "response.output_text.delta",
                    **self._at(self.open),
                    delta=text,
                    logprobs=translate.logprob_entries(logprobs),
                )
            )
        return frames

    def call(self, call: ToolCall) -> list[bytes]:
        frames = self.close()
        index = len(self.output)
        item_id = self._item_id("fc")
        namespace = self.reply.namespaces.get(call.name)
        added = translate.function_call_item(item_id, call, "in_progress", arguments="", namespace=namespace)
        done = translate.function_call_item(item_id, call, namespace=namespace)
        self.output.append(done)
        at = {"item_id": item_id, "output_index": index}
        frames.append(self.event("response.output_item.added", output_index=index, item=added))
        if call.arguments:
            frames.append(self.event("response.function_call_arguments.delta", **at, delta=call.arguments))
        frames.append(
            self.event(
                "response.function_call_arguments.done", **at, name=call.name, arguments=call.arguments
            )
        )
        frames.append(self.event("response.output_item.done", output_index=index, item=done))
        return frames

    def close(self) -> list[bytes]:
        """End the open reasoning or message item, if any."""
        item, self.open = self.open, None
        if item is None:
            return []
        text = "".join(item.parts)
        at = self._at(item)
        if item.kind == "reasoning":
            done = translate.reasoning_item(item.id, text)
            frames = [self.event("response.reasoning_text.done", **at, text=text)]
        else:
            done = translate.message_item(item.id, text, logprobs=item.logprobs)
            entries = translate.logprob_entries(item.logprobs)
            frames = [self.event("response.output_text.done", **at, text=text, logprobs=entries)]
        self.output[item.index] = done
        part = done["content"][0] if item.kind == "message" else self._part(item.kind, text)
        frames.append(self.event("response.content_part.done", **at, part=part))
        frames.append(self.event("response.output_item.done", output_index=item.index, item=done))
        return frames

    @staticmethod
    def _at(item: _Open) -> dict[str, Any]:
        return {"item_id": item.id, "output_index": item.index, "content_index": 0}

    @staticmethod
    def _part(kind: str, text: str) -> dict[str, Any]:
        return (
            {"type": "reasoning_text", "text": text} if kind == "reasoning" else translate.output_text(text)
        )


async def open_stream(
    services: Context, started: Started, reply: translate.Reply, save: Save | None
) -> StreamingResponse:
    """Wait for the first event (raising early errors), then stream; `save` stores the final
    response before its last event (so a client that saw it can retrieve it)."""
    events = await primed(started.events, services.settings.keepalive_s)
    outcome = StreamStatus()
    body = counted(
        _frames(reply, events, save, outcome),
        lambda status: services.metrics.request(PROTOCOL, OPERATION, status),
        outcome,
    )
    return StreamingResponse(
        with_keepalive(body, services.settings.keepalive_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _frames(
    reply: translate.Reply,
    events: AsyncIterator[tuple[int, PipelineEvent]],
    save: Save | None,
    outcome: StreamStatus,
) -> AsyncGenerator[bytes, None]:
    r = Renderer(reply)
    usage = Usage(0, 0)
    finish: FinishReason = "unknown"
    try:
        yield r.event("response.created", response=reply.response("in_progress", []))
        yield r.event("response.in_progress", response=reply.response("in_progress", []))
        async for _, event in events:
            if isinstance(event, TextDelta) and event.text:
                for data in r.delta("message", event.text, event.logprobs):
                    yield data
            elif isinstance(event, ReasoningDelta) and event.text:
                for data in r.delta("reasoning", event.text):
                    yield data
            elif isinstance(event, ToolCallEvent):
                for data in r.call(event.call):
                    yield data
            elif isinstance(event, Usage):
                usage = event
            elif isinstance(event, Finished):
                finish = event.reason
        for data in r.close():
            yield data
        if not r.output:  # as a non-streamed response: an empty message rather than no output
            for data in r.delta("message", ""):
                yield data
            for data in r.close():
                yield data
        status, incomplete = translate.status_of(finish)
        final = reply.response(status, r.output, translate.usage(usage), incomplete=incomplete)
        if save is not None:
            await save(final)
        outcome.status = "success"
        yield r.event(
            "response.completed" if status == "completed" else "response.incomplete", response=final
        )
    except Exception as exc:
        outcome.status = exc.code if isinstance(exc, KimiserveError) else "internalServerError"
        error = failed_error(exc, current_request_id.get() or reply.id)
        yield r.event("response.failed", response=reply.response("failed", r.output, error=error))
    finally:
        await events.aclose()  # type: ignore[attr-defined]
