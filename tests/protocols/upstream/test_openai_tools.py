"""Tools and thinking through the official openai SDK, via a real kimiserve in front of the
stand-in vLLM (`tests/standin/`), whose engine has `tools="native"`, `thinking="budgeted"`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI

from tests.protocols.upstream.conftest import WEATHER_SCHEMA, Front

MODEL = "kimi-k2.6"
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": WEATHER_SCHEMA,
    },
}
ASK: Any = [{"role": "user", "content": "What is the weather in Beijing?"}]


@pytest.fixture
async def client(kimi: Front) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{kimi.server.base_url}/v1", api_key=kimi.key, max_retries=0) as c:
        yield c


@pytest.mark.parametrize(
    ("choice", "upstream"),
    [
        (None, "auto"),
        ("auto", "auto"),
        ("required", "required"),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
    ],
)
async def test_tool_call_on_the_message(client: AsyncOpenAI, kimi: Front, choice: Any, upstream: Any) -> None:
    extra = {} if choice is None else {"tool_choice": choice}
    reply = await client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], parallel_tool_calls=False, **extra
    )
    choice0 = reply.choices[0]
    assert choice0.finish_reason == "tool_calls"
    calls = choice0.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Beijing"}  # type: ignore[union-attr]
    assert call.id
    body = kimi.last_upstream_body()
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert body["tool_choice"] == upstream


async def test_tool_choice_none_reaches_the_upstream(client: AsyncOpenAI, kimi: Front) -> None:
    await client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="none")
    assert kimi.last_upstream_body()["tool_choice"] == "none"


async def test_streamed_tool_calls_reassembled_by_the_sdk(client: AsyncOpenAI) -> None:
    async with client.chat.completions.stream(model=MODEL, messages=ASK, tools=[WEATHER]) as stream:
        firsts: list[Any] = []
        async for event in stream:
            if event.type == "chunk" and event.chunk.choices:
                for part in event.chunk.choices[0].delta.tool_calls or ():
                    firsts.append(part)
        final = await stream.get_final_completion()
    # As OpenAI streams a call: index, id and name first, then the arguments.
    assert firsts[0].index == 0 and firsts[0].id and firsts[0].function.name == "get_weather"
    assert all(p.id is None for p in firsts[1:])
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Beijing"}
    assert call.id == firsts[0].id


async def test_tool_result_history_is_sent_upstream(client: AsyncOpenAI, kimi: Front) -> None:
    messages: Any = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Beijing"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": "Sunny, 21 °C"},
    ]
    reply = await client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    assert reply.choices[0].message.tool_calls
    sent = kimi.last_upstream_body()["messages"]
    assert sent[-1]["role"] == "tool" and sent[-1]["content"] == "Sunny, 21 °C"
    assert sent[-1]["tool_call_id"] == sent[-2]["tool_calls"][0]["id"]


async def test_reasoning_content_on_the_raw_message(client: AsyncOpenAI, kimi: Front) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hello there"}], reasoning_effort="high"
    )
    data = json.loads(raw.text)
    message = data["choices"][0]["message"]
    assert message["reasoning_content"] == "The user asks; answer briefly."
    assert message["content"] == "hello there"
    assert data["usage"]["completion_tokens_details"]["reasoning_tokens"] == 3
    assert kimi.last_upstream_body()["chat_template_kwargs"] == {"thinking": True}


async def test_thinking_in_extra_body_streams_reasoning_deltas(client: AsyncOpenAI, kimi: Front) -> None:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        extra_body={"thinking": {"type": "enabled"}},
    )
    reasoning = ""
    async for chunk in stream:
        if chunk.choices:
            reasoning += (chunk.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
    assert reasoning == "The user asks; answer briefly."
    disabled = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"thinking": {"type": "disabled"}},
    )
    assert (disabled.choices[0].message.model_extra or {}).get("reasoning_content") is None
    assert kimi.last_upstream_body()["chat_template_kwargs"] == {"thinking": False}


async def test_duplicate_tool_names_refused_by_name(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, WEATHER])
    assert info.value.param == "tools[1].function.name"
