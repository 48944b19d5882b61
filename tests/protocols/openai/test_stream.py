"""The chunk stream: merging N generations, in-band errors, closing on disconnect."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from kimiserve.domain.inference import merge
from kimiserve.domain.types import Event, Finished, TextDelta, Usage
from kimiserve.errors import EngineError
from kimiserve.protocols.openai import translate
from kimiserve.protocols.openai.stream import _frames

REPLY = translate.Reply("chatcmpl-x", "kimi-k2.6", 0)


class Source:
    """A scripted event stream that records whether it was closed."""

    def __init__(self, events: list[Event], *, delay_s: float = 0.0, fail: bool = False) -> None:
        self.events = events
        self.delay_s = delay_s
        self.fail = fail
        self.closed = False

    async def run(self) -> AsyncIterator[Event]:
        try:
            for event in self.events:
                await asyncio.sleep(self.delay_s)
                yield event
            if self.fail:
                raise EngineError("died")
        finally:
            self.closed = True


def decode(frames: list[bytes]) -> list[Any]:
    out = []
    for f in frames:
        payload = f.decode().removeprefix("data: ").strip()
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def generation(text: str, n_tokens: int = 2) -> list[Event]:
    return [TextDelta(text), Usage(3, n_tokens), Finished("stop")]


async def test_merge_tags_and_closes() -> None:
    a, b = Source(generation("a"), delay_s=0.01), Source(generation("b"), delay_s=0.015)
    got = [(i, e) async for i, e in merge([a.run(), b.run()])]
    assert [e for i, e in got if i == 0] == generation("a")
    assert [e for i, e in got if i == 1] == generation("b")
    assert a.closed and b.closed


async def test_merge_closing_early_closes_all_sources() -> None:
    a, b = Source(generation("a") * 50, delay_s=0.01), Source(generation("b") * 50, delay_s=0.01)
    merged = merge([a.run(), b.run()])
    await anext(merged)
    await merged.aclose()  # type: ignore[attr-defined]
    assert a.closed and b.closed


async def test_frames_order_with_usage() -> None:
    merged = merge([Source(generation("a")).run(), Source(generation("b", 4)).run()])
    frames = decode([f async for f in _frames(REPLY, merged, 2, include_usage=True, names={})])
    assert frames[-1] == "[DONE]"
    usage = frames[-2]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6
    assert usage["usage"]["prompt_tokens"] == 6
    roles = [f["choices"][0]["index"] for f in frames[:2]]
    assert roles == [0, 1] and all(f["choices"][0]["delta"]["role"] == "assistant" for f in frames[:2])
    finishes = [f["choices"][0] for f in frames[2:-2] if f["choices"][0]["finish_reason"]]
    assert sorted(c["index"] for c in finishes) == [0, 1]
    assert all("usage" in f and f["usage"] is None for f in frames[:-2])


async def test_error_after_start_is_in_band_and_ends_the_stream() -> None:
    source = Source([TextDelta("partial")], fail=True)
    frames = decode([f async for f in _frames(REPLY, merge([source.run()]), 1, include_usage=True, names={})])
    assert frames[1]["choices"][0]["delta"] == {"content": "partial"}
    last = frames[-2]
    assert last["error"]["type"] == "server_error" and "chatcmpl-x" in last["error"]["message"]
    assert frames[-1] == "[DONE]"  # the stream still ends the way OpenAI clients wait for
    assert source.closed
