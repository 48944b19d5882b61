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
from tests.protocols.openai.test_tools_thinking import SCHEMA, WEATHER

pytestmark = real_engine_only

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
        model=MODEL, messages=TWO, tools=[WEATHER], tool_choice="required", max_completion_tokens=200, seed=1
    )
    [choice] = reply.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None
    assert [c.id for c in calls] == ["functions.get_weather:0", "functions.get_weather:1"]
    assert cities(calls) == ["Paris", "London"]


async def test_two_calls_streamed_under_their_indices(client: AsyncOpenAI) -> None:
    async with client.chat.completions.stream(
        model=MODEL, messages=TWO, tools=[WEATHER], tool_choice="required", max_completion_tokens=200, seed=1
    ) as stream:
        heads: list[Any] = []
        async for event in stream:
            if event.type == "chunk" and event.chunk.choices:
                heads += [p for p in event.chunk.choices[0].delta.tool_calls or () if p.id]
        final = await stream.get_final_completion()
    assert [(h.index, h.id) for h in heads] == [
        (0, "functions.get_weather:0"),
        (1, "functions.get_weather:1"),
    ]
    [choice] = final.choices
    assert choice.finish_reason == "tool_calls"
    assert cities(choice.message.tool_calls) == ["Paris", "London"]


@pytest.mark.parametrize("stream", [False, True])
async def test_parallel_false_gives_one_call(client: AsyncOpenAI, stream: bool) -> None:
    asked: Any = {
        "model": MODEL,
        "messages": TWO,
        "tools": [WEATHER],
        "tool_choice": "required",
        "max_completion_tokens": 200,
        "seed": 1,
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
