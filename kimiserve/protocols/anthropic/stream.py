"""`stream: true`: Anthropic's typed events over SSE (`event: <type>` + `data: {...}`).

    message_start → ping → per content block: content_block_start, content_block_delta…,
    content_block_stop → message_delta (stop_reason, usage) → message_stop

Blocks open as the engine's events come: reasoning is a `thinking` block (`thinking_delta`s,
then one `signature_delta` before it stops), text a `text` block (`text_delta`), each tool call
a `tool_use` block whose `input_json_delta` carries the whole arguments (engines hand over
whole, validated calls). The prompt's usage is known only at the end: `message_start` says 0
input tokens and `message_delta` the real counts (the SDK takes a delta's counts over the
start's). A silent stream gets `ping` events. Errors before the first event are HTTP errors
(`primed`); after it, one `error` event ends the stream. A client leaving closes the events,
which settles or releases the request.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse

from kimiserve.domain.inference import Started
from kimiserve.domain.types import Finished, PipelineEvent, ReasoningDelta, TextDelta, ToolCallEvent, Usage
from kimiserve.errors import KimiserveError
from kimiserve.http.context import Context
from kimiserve.http.encoding import dumps
from kimiserve.http.sse import StreamStatus, counted, primed, with_keepalive
from kimiserve.protocols.anthropic import translate
from kimiserve.protocols.anthropic.errors import render

PROTOCOL = translate.PROTOCOL
PING = b'event: ping\ndata: {"type": "ping"}\n\n'


def event(payload: dict[str, Any]) -> bytes:
    return f"event: {payload['type']}\ndata: {dumps(payload)}\n\n".encode()


async def open_stream(
    services: Context, started: Started, message_id: str, model: str, request_id: str
) -> StreamingResponse:
    """Wait for the first event (raising early errors), then stream."""
    events = await primed(started.events, services.settings.keepalive_s)  # closes them if it raises
    outcome = StreamStatus()
    body = counted(
        _frames(events, message_id, model, request_id, outcome),
        lambda status: services.metrics.request(PROTOCOL, "messages", status),
        outcome,
    )
    return StreamingResponse(
        with_keepalive(body, services.settings.keepalive_s, PING),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "request-id": request_id},
    )


class _Blocks:
    """The open content block, and the frames that open, feed and stop blocks."""

    def __init__(self) -> None:
        self.index = -1
        self.kind: str | None = None
        self.thinking = ""

    def open(self, block: dict[str, Any]) -> list[bytes]:
        frames = self.close()
        self.index += 1
        self.kind = block["type"]
        return [*frames, event({"type": "content_block_start", "index": self.index, "content_block": block})]

    def delta(self, delta: dict[str, Any]) -> bytes:
        return event({"type": "content_block_delta", "index": self.index, "delta": delta})

    def close(self) -> list[bytes]:
        if self.kind is None:
            return []
        frames = []
        if self.kind == "thinking":
            frames.append(
                self.delta({"type": "signature_delta", "signature": translate.signature(self.thinking)})
            )
            self.thinking = ""
        self.kind = None
        return [*frames, event({"type": "content_block_stop", "index": self.index})]

    def reasoning(self, text: str) -> list[bytes]:
        frames = (
            self.open({"type": "thinking", "thinking": "", "signature": ""})
            if self.kind != "thinking"
            else []
        )
        self.thinking += text
        return [*frames, self.delta({"type": "thinking_delta", "thinking": text})]

    def text(self, text: str) -> list[bytes]:
        frames = self.open({"type": "text", "text": ""}) if self.kind != "text" else []
        return [*frames, self.delta({"type": "text_delta", "text": text})]

    def tool_call(self, event: ToolCallEvent) -> list[bytes]:
        call = event.call
        frames = self.open({"type": "tool_use", "id": call.id, "name": call.name, "input": {}})
        frames.append(self.delta({"type": "input_json_delta", "partial_json": call.arguments or "{}"}))
        return [*frames, *self.close()]


async def _frames(
    events: AsyncIterator[tuple[int, PipelineEvent]],
    message_id: str,
    model: str,
    request_id: str,
    outcome: StreamStatus,
) -> AsyncGenerator[bytes, None]:
    start: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": translate.usage(None),
    }
    blocks = _Blocks()
    usage: Usage | None = None
    try:
        yield event({"type": "message_start", "message": start})
        yield PING
        async for _, item in events:
            frames: list[bytes] = []
            if isinstance(item, ReasoningDelta) and item.text:
                frames = blocks.reasoning(item.text)
            elif isinstance(item, TextDelta) and item.text:
                frames = blocks.text(item.text)
            elif isinstance(item, ToolCallEvent):
                frames = blocks.tool_call(item)
            elif isinstance(item, Usage):
                usage = item
            elif isinstance(item, Finished):
                frames = blocks.close()
                delta = {"stop_reason": translate.stop_reason(item.reason), "stop_sequence": None}
                frames.append(
                    event({"type": "message_delta", "delta": delta, "usage": translate.usage(usage)})
                )
            for data in frames:
                yield data
        outcome.status = "success"
        yield event({"type": "message_stop"})
    except Exception as exc:
        outcome.status = exc.code if isinstance(exc, KimiserveError) else "internalServerError"
        _, body = render(exc, request_id)
        yield event(body)
    finally:
        await events.aclose()  # type: ignore[attr-defined]
