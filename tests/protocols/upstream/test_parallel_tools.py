"""Several tool calls in one turn through the official openai SDK and instructor's PARALLEL_TOOLS
mode, via a real kimiserve in front of the stand-in vLLM (`#parallel`: two calls in one turn)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import instructor
import pytest
from openai import AsyncOpenAI
from pydantic import BaseModel

from tests.protocols.upstream.conftest import WEATHER_SCHEMA, Front

MODEL = "kimi-k2.6"
TOOLS: Any = [
    {"type": "function", "function": {"name": name, "parameters": WEATHER_SCHEMA}}
    for name in ("get_weather", "get_time")
]
ASK: Any = [{"role": "user", "content": "Weather in Beijing and time in Shanghai? #parallel"}]


@pytest.fixture
async def client(kimi: Front) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{kimi.server.base_url}/v1", api_key=kimi.key, max_retries=0) as c:
        yield c


def named(calls: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in calls]


async def test_two_calls_on_the_message(client: AsyncOpenAI, kimi: Front) -> None:
    reply = await client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None
    assert named(calls) == [("get_weather", {"city": "Beijing"}), ("get_time", {"city": "Shanghai"})]
    assert len({c.id for c in calls}) == 2
    assert kimi.last_upstream_body()["parallel_tool_calls"] is True


async def test_two_calls_streamed_under_their_indices(client: AsyncOpenAI) -> None:
    async with client.chat.completions.stream(model=MODEL, messages=ASK, tools=TOOLS) as stream:
        heads: list[Any] = []
        async for event in stream:
            if event.type == "chunk" and event.chunk.choices:
                heads += [p for p in event.chunk.choices[0].delta.tool_calls or () if p.id]
        final = await stream.get_final_completion()
    assert [(h.index, h.function.name) for h in heads] == [(0, "get_weather"), (1, "get_time")]
    calls = final.choices[0].message.tool_calls
    assert calls is not None and [c.id for c in calls] == [h.id for h in heads]
    assert named(calls) == [("get_weather", {"city": "Beijing"}), ("get_time", {"city": "Shanghai"})]
    assert final.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("stream", [False, True])
async def test_parallel_false_gives_one_call(client: AsyncOpenAI, kimi: Front, stream: bool) -> None:
    if stream:
        async with client.chat.completions.stream(
            model=MODEL, messages=ASK, tools=TOOLS, parallel_tool_calls=False
        ) as events:
            reply = await events.get_final_completion()
    else:
        reply = await client.chat.completions.create(
            model=MODEL, messages=ASK, tools=TOOLS, parallel_tool_calls=False
        )
    assert named(reply.choices[0].message.tool_calls) == [("get_weather", {"city": "Beijing"})]
    assert kimi.last_upstream_body()["parallel_tool_calls"] is False


class Weather(BaseModel):
    city: str


class Time(BaseModel):
    city: str


async def test_instructor_parallel_tools_returns_two_objects(client: AsyncOpenAI) -> None:
    patched = instructor.from_openai(client, mode=instructor.Mode.PARALLEL_TOOLS)
    answer = await patched.chat.completions.create(
        model=MODEL,
        messages=ASK,
        response_model=Iterable[Weather | Time],  # type: ignore[arg-type]
    )
    objects = list(answer)  # type: ignore[call-overload]
    assert objects == [Weather(city="Beijing"), Time(city="Shanghai")]
    assert [type(o) for o in objects] == [Weather, Time]
