"""Streamed chat-completion chunks → kimiserve events.

Reads what vLLM, SGLang, llama-server and hosted APIs send: reasoning as `reasoning_content`
(Moonshot, SGLang, older vLLM) or `reasoning` (vLLM after PR 27752); tool calls as deltas keyed
by `index` (the id and name in the first, the arguments split over the rest); usage in the last
chunk (`stream_options.include_usage`) with `prompt_tokens_details.cached_tokens` and
`completion_tokens_details.reasoning_tokens`. Tool calls are held until the stream ends, so they
can be validated whole before anything of them reaches the client. Kimi's raw tool-call markers
in `content` or the reasoning are taken out of the text as it streams (repairs.MarkerFilter) and
kept as calls; a call id that changes under one `index` starts another call (vllm issue 24478).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kimiserve.domain.types import (
    Event,
    FinishReason,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    Usage,
)
from kimiserve.engines.openai_compat.repairs import MarkerFilter, RawCall

FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "abort": "cancelled",
}


class SseData:
    """The `data:` payloads of an SSE body, fed the bytes as they arrive, up to `[DONE]` (then
    `done`; comments and other fields skipped).

    Splits lines itself (`\n` or `\r\n`, as vLLM, SGLang and llama-server end them): no text
    decoding, line iterator or async generator between the socket and the JSON (a stream's
    chunks mostly arrive one per read, so each layer is paid per token).
    """

    def __init__(self) -> None:
        self.done = False
        self._pending = b""

    def feed(self, piece: bytes) -> list[bytes]:
        lines = (self._pending + piece if self._pending else piece).split(b"\n")
        self._pending = lines.pop()
        out: list[bytes] = []
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                self.done = True
                return out
            if data:
                out.append(data)
        return out

    def end(self) -> list[bytes]:
        """What is left when the body ends without `[DONE]`: a last line without its newline."""
        pending, self._pending = self._pending, b""
        if pending.startswith(b"data:") and (data := pending[5:].strip()) and data != b"[DONE]":
            return [data]
        return []


@dataclass
class _PendingCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


def usage_of(raw: dict[str, Any]) -> Usage:
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    cached = _int(prompt_details.get("cached_tokens")) or _int(raw.get("cached_tokens"))  # Moonshot v1
    return Usage(
        prompt_tokens=_int(raw.get("prompt_tokens")),
        completion_tokens=_int(raw.get("completion_tokens")),
        cached_tokens=cached,
        reasoning_tokens=_int(completion_details.get("reasoning_tokens")),
    )


@dataclass
class ChunkReader:
    """Feed it chunks (parsed JSON) in order; it returns the events to yield now and keeps the
    tool calls, the finish reason and the usage for the end."""

    calls: dict[int, _PendingCall] = field(default_factory=dict)
    finish: str | None = None
    usage: Usage | None = None
    produced: int = 0  # text/reasoning deltas seen (a stand-in count when usage never comes)
    answered: bool = False  # content other than whitespace was yielded
    split: int = 0  # calls started by a new id under an index already in use
    content: MarkerFilter = field(default_factory=MarkerFilter)
    thinking: MarkerFilter = field(default_factory=MarkerFilter)
    _index: dict[int, int] = field(default_factory=dict)  # upstream index → key in `calls`

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        if isinstance(chunk.get("usage"), dict):
            self.usage = usage_of(chunk["usage"])
        events: list[Event] = []
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning and (shown := self.thinking.feed(str(reasoning))):
                events.append(ReasoningDelta(shown))
            content = delta.get("content")
            if content and (shown := self.content.feed(str(content))):
                events.append(self._text(shown))
            for part in delta.get("tool_calls") or ():
                self._call_delta(part)
            if choice.get("finish_reason"):
                self.finish = str(choice["finish_reason"])
        self.produced += len(events)
        return events

    def close(self) -> list[Event]:
        """The end of the stream: text held back as a possible marker start, when it was not."""
        events: list[Event] = []
        if reasoning := self.thinking.close():
            events.append(ReasoningDelta(reasoning))
        if content := self.content.close():
            events.append(self._text(content))
        return events

    def _text(self, text: str) -> TextDelta:
        self.answered = self.answered or bool(text.strip())
        return TextDelta(text)

    def leaked(self) -> list[RawCall]:
        """Calls found as raw markers in the content or the reasoning."""
        return self.content.calls() + self.thinking.calls()

    def _call_delta(self, part: dict[str, Any]) -> None:
        index = _int(part.get("index", len(self._index)))
        key = self._index.setdefault(index, len(self.calls))
        pending = self.calls.setdefault(key, _PendingCall())
        new_id = str(part.get("id") or "")
        if new_id and pending.id and new_id != pending.id:
            self.split += 1  # another call under the same index: its own call
            key = self._index[index] = len(self.calls)
            pending = self.calls[key] = _PendingCall()
        if new_id:
            pending.id = new_id
        function = part.get("function") or {}
        if function.get("name"):
            pending.name = str(function["name"])
        if function.get("arguments"):
            pending.arguments.append(str(function["arguments"]))

    def tool_calls(self) -> list[ToolCall]:
        return [
            ToolCall(id=p.id, name=p.name, arguments="".join(p.arguments) or "{}")
            for _, p in sorted(self.calls.items())
        ]

    def finish_reason(self) -> FinishReason:
        if self.calls:
            return "tool_calls"  # engines differ: `tool_calls`, or a `stop` that carries calls
        return FINISH.get(self.finish or "", "unknown")
