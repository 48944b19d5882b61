"""The Messages API through the official `anthropic` SDK, in front of an upstream pool (the
stand-in vLLM serving Kimi K2.6): text, stream, a tool round trip, thinking with an exact budget,
count_tokens."""

from __future__ import annotations

import json
from typing import Any

from anthropic import AsyncAnthropic

from tests.protocols.upstream.conftest import WEATHER_SCHEMA, Front

MODEL = "kimi-k2.6"
WEATHER: Any = {"name": "get_weather", "description": "The weather.", "input_schema": WEATHER_SCHEMA}


def client(kimi: Front) -> AsyncAnthropic:
    return AsyncAnthropic(base_url=kimi.server.base_url, api_key=kimi.key, max_retries=0)


async def test_create_and_stream_echo_with_thinking_off(kimi: Front) -> None:
    async with client(kimi) as c:
        reply = await c.messages.create(
            model="claude-opus-4-1",
            max_tokens=64,
            messages=[{"role": "user", "content": "hello upstream world"}],
        )
        assert [b.type for b in reply.content] == ["text"]
        assert reply.content[0].text == "hello upstream world"  # type: ignore[union-attr]
        assert reply.stop_reason == "end_turn" and reply.model == "claude-opus-4-1"
        body = kimi.last_upstream_body()
        assert body["chat_template_kwargs"]["thinking"] is False
        assert body["max_tokens"] == 64
        async with c.messages.stream(
            model=MODEL,
            max_tokens=64,
            system=[{"type": "text", "text": "Be kind."}],
            messages=[{"role": "user", "content": "streamed words here"}],
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        assert text == "streamed words here"
        assert final.usage.input_tokens > 0 and final.usage.output_tokens == 3
        assert kimi.last_upstream_body()["messages"][0] == {"role": "system", "content": "Be kind."}


async def test_tool_round_trip(kimi: Front) -> None:
    ask: Any = [{"role": "user", "content": "Weather in Beijing?"}]
    async with client(kimi) as c:
        first = await c.messages.create(model=MODEL, max_tokens=64, messages=ask, tools=[WEATHER])
        assert first.stop_reason == "tool_use"
        [call] = [b for b in first.content if b.type == "tool_use"]
        assert call.name == "get_weather" and call.input == {"city": "Beijing"}
        history: Any = [
            *ask,
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny"}],
            },
        ]
        await c.messages.create(model=MODEL, max_tokens=64, messages=history, tools=[WEATHER])
    sent = kimi.last_upstream_body()["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == call.id
    assert json.loads(sent[-2]["tool_calls"][0]["function"]["arguments"]) == {"city": "Beijing"}
    assert sent[-1] == {"role": "tool", "content": "Sunny", "tool_call_id": call.id} or (
        sent[-1]["role"] == "tool" and sent[-1]["content"] == "Sunny"
    )


async def test_thinking_budget_is_exact_upstream(kimi: Front) -> None:
    """budget_tokens 1030 is no level's budget (medium is 1024, high 4096): the reasoning is cut
    at exactly 1030 tokens, then the continuation answers."""
    async with (
        client(kimi) as c,
        c.messages.stream(
            model=MODEL,
            max_tokens=4000,
            thinking={"type": "enabled", "budget_tokens": 1030},
            messages=[{"role": "user", "content": "think long #reason-1200"}],
        ) as stream,
    ):
        deltas = [e.delta.type async for e in stream if e.type == "content_block_delta"]
        final = await stream.get_final_message()
    [thinking, text] = final.content
    assert thinking.type == "thinking" and len(thinking.thinking.split()) == 1030
    assert text.type == "text" and "think long" in text.text
    assert deltas.count("signature_delta") == 1
    assert final.usage.output_tokens >= 1030


async def test_count_tokens_estimates_for_an_upstream(kimi: Front) -> None:
    async with client(kimi) as c:
        short = await c.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        long = await c.messages.count_tokens(
            model="claude-haiku-4-5", messages=[{"role": "user", "content": "word " * 400}], tools=[WEATHER]
        )
    assert 0 < short.input_tokens < 20
    assert 500 < long.input_tokens < 2000  # ~4 bytes a token: an estimate, not the hold's bound
