"""Function calls and thinking on the embedded model through the official openai SDK (real server)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from openai import AsyncOpenAI

from tests.protocols.openai.support import MODEL, real_engine_only

pytestmark = real_engine_only

SCHEMA: Any = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER: Any = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather in a city.", "parameters": SCHEMA},
}
CLOCK: Any = {
    "type": "function",
    "function": {
        "name": "now",
        "description": "The time.",
        "parameters": {"type": "object", "properties": {}},
    },
}
ASK: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.mark.parametrize(
    "choice",
    ["required", {"type": "function", "function": {"name": "get_weather"}}],
    ids=["required", "named"],
)
async def test_forced_call_on_the_message_matches_the_schema(client: AsyncOpenAI, choice: Any) -> None:
    reply = await client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[CLOCK, WEATHER],
        tool_choice=choice,
        max_completion_tokens=80,
        seed=1,
    )
    [choice0] = reply.choices
    assert choice0.finish_reason == "tool_calls"
    calls = choice0.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.id
    if isinstance(choice, dict):
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
    if call.function.name == "get_weather":  # type: ignore[union-attr]
        jsonschema.validate(json.loads(call.function.arguments), SCHEMA)  # type: ignore[union-attr]
    assert reply.usage is not None and reply.usage.completion_tokens > 0


async def test_auto_and_none(client: AsyncOpenAI) -> None:
    none = await client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="none", max_completion_tokens=16, seed=2
    )
    assert none.choices[0].message.content and not none.choices[0].message.tool_calls
    auto = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        tools=[WEATHER],
        tool_choice="auto",
        max_completion_tokens=16,
        seed=2,
    )
    message = auto.choices[0].message
    assert message.content or message.tool_calls  # the model chose; either form is well-formed
    for call in message.tool_calls or ():
        jsonschema.validate(json.loads(call.function.arguments), SCHEMA)  # type: ignore[union-attr]


async def test_streamed_call_reassembled_by_the_sdk(client: AsyncOpenAI) -> None:
    async with client.chat.completions.stream(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", max_completion_tokens=80, seed=3
    ) as stream:
        parts: list[Any] = []
        async for event in stream:
            if event.type == "chunk" and event.chunk.choices:
                parts.extend(event.chunk.choices[0].delta.tool_calls or ())
        final = await stream.get_final_completion()
    assert parts and parts[0].index == 0 and parts[0].id and parts[0].function.name == "get_weather"
    [choice] = final.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.id == parts[0].id
    jsonschema.validate(json.loads(call.function.arguments), SCHEMA)


async def test_tool_result_history(client: AsyncOpenAI) -> None:
    messages: Any = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris","unit":"celsius"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": "Sunny, 21 degrees"},
    ]
    reply = await client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER], max_completion_tokens=16, seed=4
    )
    assert reply.choices[0].message.content or reply.choices[0].message.tool_calls
    bare = await client.chat.completions.create(model=MODEL, messages=ASK, max_completion_tokens=1)
    assert reply.usage is not None and bare.usage is not None
    assert reply.usage.prompt_tokens > bare.usage.prompt_tokens + 40  # tools, call and result rendered


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
async def test_reasoning_content_bounded_closed_and_counted(client: AsyncOpenAI, effort: str) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a fruit."}],
        reasoning_effort=effort,  # type: ignore[arg-type]
        max_completion_tokens=64,
        seed=5,
    )
    data = json.loads(raw.text)
    message = data["choices"][0]["message"]
    usage = data["usage"]
    reasoning_tokens = usage["completion_tokens_details"]["reasoning_tokens"]
    # max_tokens covers both: reasoning gets at most half of it, and the engine closes the section
    assert message["reasoning_content"] and message["content"].strip()
    assert "</think>" not in message["reasoning_content"] + message["content"]
    assert 0 < reasoning_tokens <= 32
    assert reasoning_tokens < usage["completion_tokens"] <= 64
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_thinking_streams_reasoning_then_content(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a fruit."}],
        stream=True,
        stream_options={"include_usage": True},
        max_completion_tokens=48,
        extra_body={"thinking": {"type": "enabled"}},
        seed=6,
    )
    order: list[str] = []
    usage = None
    async for chunk in stream:
        usage = chunk.usage or usage
        if chunk.choices:
            delta = chunk.choices[0].delta
            if (delta.model_extra or {}).get("reasoning_content"):
                order.append("r")
            if delta.content:
                order.append("c")
    assert order and order[0] == "r" and "c" in order
    assert "r" not in order[order.index("c") :]
    assert usage is not None and usage.completion_tokens_details is not None
    assert 0 < (usage.completion_tokens_details.reasoning_tokens or 0) <= 24


async def test_thinking_disabled_has_no_reasoning(client: AsyncOpenAI) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a fruit."}],
        max_completion_tokens=8,
        extra_body={"thinking": {"type": "disabled"}},
    )
    data = json.loads(raw.text)
    assert not data["choices"][0]["message"].get("reasoning_content")
    assert data["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
