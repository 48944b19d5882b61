"""The Messages API on the embedded model through the official `anthropic` SDK (real server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from anthropic import AsyncAnthropic

from tests.protocols.openai.support import MODEL, real_engine_only, usage_rows
from tests.serverproc import ServerProcess

ASK: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 24}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


async def test_create_answers_with_text_and_usage(client: AsyncAnthropic, server_dir: Path) -> None:
    reply = await client.messages.create(
        model=MODEL,
        max_tokens=12,
        system="You are terse.",
        messages=[{"role": "user", "content": "Write one sentence about the sea."}],
    )
    assert reply.type == "message" and reply.role == "assistant" and reply.model == MODEL
    assert reply.id.startswith("msg_")
    [block] = reply.content
    assert block.type == "text" and block.text
    assert reply.stop_reason in ("end_turn", "max_tokens")
    assert reply.usage.input_tokens > 0 and 0 < reply.usage.output_tokens <= 12
    [row] = usage_rows(server_dir, reply.id)
    assert row["protocol"] == "anthropic"
    assert row["completion_tokens"] == reply.usage.output_tokens


async def test_max_tokens_stops_with_max_tokens(client: AsyncAnthropic) -> None:
    reply = await client.messages.create(
        model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "Count from one to fifty."}]
    )
    assert reply.stop_reason == "max_tokens" and reply.usage.output_tokens == 3


async def test_stream_events_build_the_same_message(client: AsyncAnthropic) -> None:
    kinds: list[str] = []
    async with client.messages.stream(
        model=MODEL,
        max_tokens=12,
        messages=[{"role": "user", "content": "Write one sentence about the sea."}],
        extra_body={"temperature": 0.5, "top_k": 40, "top_p": 0.9},  # stream() has no parameters for them
    ) as stream:
        async for event in stream:
            kinds.append(event.type)
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_delta" in kinds
    assert kinds.index("message_delta") > kinds.index("content_block_stop")
    [block] = final.content
    assert block.type == "text" and block.text
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    assert final.stop_reason in ("end_turn", "max_tokens")


async def test_count_tokens_is_the_prompt_the_engine_counts(client: AsyncAnthropic) -> None:
    question: Any = [{"role": "user", "content": "Write one sentence about the sea."}]
    counted = await client.messages.count_tokens(model=MODEL, messages=question, system="Be brief.")
    reply = await client.messages.create(model=MODEL, max_tokens=2, messages=question, system="Be brief.")
    assert counted.input_tokens > 0
    assert counted.input_tokens == reply.usage.input_tokens + (reply.usage.cache_read_input_tokens or 0)
    longer = await client.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "Write one sentence about the sea, please."}]
    )
    assert longer.input_tokens > 0


@real_engine_only
async def test_tool_round_trip(client: AsyncAnthropic) -> None:
    first = await client.messages.create(
        model=MODEL,
        max_tokens=60,
        messages=ASK,
        tools=[WEATHER],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},  # one call to answer
    )
    assert first.stop_reason == "tool_use"
    [call] = [b for b in first.content if b.type == "tool_use"]
    assert call.name == "get_weather" and isinstance(call.input, dict) and isinstance(call.input["city"], str)
    history: Any = [
        *ASK,
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C."}],
        },
    ]
    second = await client.messages.create(
        model=MODEL, max_tokens=16, messages=history, tools=[WEATHER], tool_choice={"type": "none"}
    )
    assert second.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in second.content] == ["text"]


@real_engine_only
async def test_named_tool_choice_streams_input_json(client: AsyncAnthropic) -> None:
    deltas: list[str] = []
    async with client.messages.stream(
        model=MODEL,
        max_tokens=60,
        messages=ASK,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
    ) as stream:
        async for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                deltas.append(event.delta.partial_json)
        final = await stream.get_final_message()
    assert deltas and final.stop_reason == "tool_use"
    [call] = final.content
    assert call.type == "tool_use" and call.name == "get_weather" and "city" in call.input


@real_engine_only
async def test_thinking_blocks_and_history(client: AsyncAnthropic) -> None:
    """Thinking on the embedded model (an effort level's budget; the exact `budget_tokens`, at
    least 1024, is checked on the upstream stand-in, where it costs no CPU minutes)."""
    thinking: Any = {"type": "adaptive"}
    effort: Any = {"output_config": {"effort": "low"}}
    reply = await client.messages.create(
        model=MODEL,
        max_tokens=24,
        thinking=thinking,
        messages=[{"role": "user", "content": "Is 17 prime?"}],
        extra_body=effort,
    )
    assert reply.content[0].type == "thinking", reply.content
    assert reply.content[0].thinking and reply.content[0].signature
    async with client.messages.stream(
        model=MODEL,
        max_tokens=24,
        thinking=thinking,
        extra_body=effort,
        messages=[
            {"role": "user", "content": "Is 17 prime?"},
            {"role": "assistant", "content": [b.model_dump() for b in reply.content]},
            {"role": "user", "content": "And 21?"},
        ],
    ) as stream:
        deltas = {e.delta.type async for e in stream if e.type == "content_block_delta"}
        final = await stream.get_final_message()
    assert {"thinking_delta", "signature_delta"} <= deltas
    assert final.content[0].type == "thinking"


async def test_x_api_key_and_bearer_both_authenticate(server: ServerProcess, api_key: str) -> None:
    body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "prompt-caching-2024-07-31"}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
        for auth in ({"x-api-key": api_key}, {"Authorization": f"Bearer {api_key}"}):
            r = await http.post("/v1/messages", json=body, headers={**headers, **auth})
            assert r.status_code == 200, r.text
            assert r.headers["request-id"].startswith("req_")
        r = await http.post("/v1/messages", json=body, headers={**headers, "x-api-key": "sk-wrong"})
        assert r.status_code == 401
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == "authentication_error"


async def test_claude_model_names_map_to_kimi(client: AsyncAnthropic) -> None:
    reply = await client.messages.create(
        model="claude-sonnet-4-5", max_tokens=2, messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.model == "claude-sonnet-4-5" and reply.content
    with pytest.raises(anthropic.NotFoundError) as caught:
        await client.messages.create(
            model="gpt-4o", max_tokens=2, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


async def test_errors_in_anthropic_shape(client: AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(
            model=MODEL,
            max_tokens=2,
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"temperature": 1.5},
        )
    error = caught.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error" and error["message"].startswith("temperature")
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(
            model=MODEL,
            max_tokens=2,
            messages=[
                {"role": "user", "content": [{"type": "document", "source": {"type": "text", "data": "x"}}]}
            ],  # type: ignore[list-item]
        )
    assert "messages.0.content.0.type" in caught.value.body["error"]["message"]  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(
            model=MODEL,
            max_tokens=2,
            messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The"}],
        )
    assert "prefill" in caught.value.body["error"]["message"]  # type: ignore[index]
