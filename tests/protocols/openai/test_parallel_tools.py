"""Several tool calls in one turn on the embedded model through the official openai SDK (real
server): two calls on the message and streamed under indices 0 and 1; `parallel_tool_calls:
false` gives one."""

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
    "properties": {"city": {"type": "string", "maxLength": 24}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER: Any = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather in a city.", "parameters": SCHEMA},
}
TWO: Any = [{"role": "user", "content": "What is the weather in Paris and in London?"}]


def cities(calls: Any) -> list[str]:
    out = []
    for call in calls:
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, SCHEMA)
        out.append(arguments["city"])
    return out


async def test_two_calls_on_the_message(client: AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(
        model=MODEL,
        messages=TWO,
        tools=[WEATHER],
        tool_choice="required",
        max_completion_tokens=200,
        temperature=0,
    )
    [choice] = reply.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None
    assert len(calls) >= 2 and [c.id for c in calls] == [
        f"functions.get_weather:{i}" for i in range(len(calls))
    ]
    assert cities(calls)[:2] == ["Paris", "London"]


async def test_two_calls_streamed_under_their_indices(client: AsyncOpenAI) -> None:
    async with client.chat.completions.stream(
        model=MODEL,
        messages=TWO,
        tools=[WEATHER],
        tool_choice="required",
        max_completion_tokens=200,
        temperature=0,
    ) as stream:
        heads: list[Any] = []
        async for event in stream:
            if event.type == "chunk" and event.chunk.choices:
                heads += [p for p in event.chunk.choices[0].delta.tool_calls or () if p.id]
        final = await stream.get_final_completion()
    assert len(heads) >= 2
    assert [(h.index, h.id) for h in heads] == [(i, f"functions.get_weather:{i}") for i in range(len(heads))]
    [choice] = final.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == len(heads)
    assert cities(choice.message.tool_calls)[:2] == ["Paris", "London"]


@pytest.mark.parametrize("stream", [False, True])
async def test_parallel_false_gives_one_call(client: AsyncOpenAI, stream: bool) -> None:
    asked: Any = {
        "model": MODEL,
        "messages": TWO,
        "tools": [WEATHER],
        "tool_choice": "required",
        "max_completion_tokens": 200,
        "temperature": 0,
        "parallel_tool_calls": False,
    }
    if stream:
        async with client.chat.completions.stream(**asked) as events:
            reply = await events.get_final_completion()
    else:
        reply = await client.chat.completions.create(**asked)
    [choice] = reply.choices
    assert choice.finish_reason == "tool_calls"
    assert cities(choice.message.tool_calls) == ["Paris"]
