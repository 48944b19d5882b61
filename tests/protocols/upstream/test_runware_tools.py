"""Runware tools and thinking against a real kimiserve in front of the stand-in vLLM: the
official SDK (runware 0.5.24) over the WebSocket, and raw HTTP/SSE for what the SDK drops
(its `IText` has no `tools` field, so calls are read from the wire)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.protocols.runware.wire import connected_sdk
from tests.protocols.upstream.conftest import WEATHER_SCHEMA, Front

runware = pytest.importorskip("runware")
types = pytest.importorskip("runware.types")

MODEL = "moonshotai:kimi@2.6"
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather.", "schema": WEATHER_SCHEMA}


@pytest.fixture
async def sdk(kimi: Front) -> AsyncIterator[Any]:
    async with connected_sdk(kimi.server.base_url, kimi.key) as client:
        yield client


def task(**fields: Any) -> dict[str, Any]:
    return {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the weather in Beijing?"}],
        **fields,
    }


def post(kimi: Front, body: dict[str, Any]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {kimi.key}"}
    return httpx.post(f"{kimi.server.base_url}/v1", json=[body], headers=headers, timeout=30)


async def test_sdk_tools_with_tool_result_history(sdk: Any, kimi: Front) -> None:
    tool = types.ITextInferenceTool(
        name="get_weather", description="The weather.", schema=WEATHER_SCHEMA, toolType="function"
    )
    first = await sdk.textInference(
        types.ITextInference(
            model=MODEL,
            messages=[types.ITextInferenceMessage(role="user", content="Weather in Beijing?")],
            tools=[tool],
            toolChoice=types.ITextInferenceToolChoice(toolType="any"),
        )
    )
    assert first[0].finishReason == "stop" and first[0].text == ""  # the call: on the wire only
    assert kimi.last_upstream_body()["tool_choice"] == "required"
    history = [
        types.ITextInferenceMessage(role="user", content="Weather in Beijing?"),
        types.ITextInferenceMessage(
            role="assistant", tools=[{"id": "call_1", "name": "get_weather", "input": {"city": "Beijing"}}]
        ),
        types.ITextInferenceMessage(role="tool", toolId="call_1", content="Sunny, 21 C"),
    ]
    again = await sdk.textInference(
        types.ITextInference(
            model=MODEL,
            messages=history,
            tools=[tool],
            toolChoice=types.ITextInferenceToolChoice(toolType="tool", name="get_weather"),
        )
    )
    assert again[0].status == "success"
    body = kimi.last_upstream_body()
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    sent = body["messages"]
    call = sent[-2]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {
        "city": "Beijing"
    }
    assert sent[-1] == {"role": "tool", "content": "Sunny, 21 C", "tool_call_id": call["id"]}


async def test_sdk_thinking_level_returns_reasoning(sdk: Any, kimi: Front) -> None:
    results = await sdk.textInference(
        types.ITextInference(
            model=MODEL,
            messages=[types.ITextInferenceMessage(role="user", content="hello there")],
            settings=types.ISettings(thinkingLevel="medium"),
            includeUsage=True,
        )
    )
    assert results[0].text == "hello there"
    assert results[0].reasoningContent == ["The user asks; answer briefly."]
    assert kimi.last_upstream_body()["chat_template_kwargs"] == {"thinking": True}
    plain = await sdk.textInference(
        types.ITextInference(model=MODEL, messages=[types.ITextInferenceMessage(role="user", content="hi")])
    )
    assert plain[0].reasoningContent is None
    assert kimi.last_upstream_body()["chat_template_kwargs"] == {"thinking": False}


def test_result_carries_tools_with_parsed_input(kimi: Front) -> None:
    reply = post(kimi, task(tools=[WEATHER], toolChoice={"type": "auto"}, includeUsage=True))
    assert reply.status_code == 200, reply.text
    item = reply.json()["data"][0]
    assert item["finishReason"] == "stop" and item["text"] == ""
    assert item["tools"] == [
        {"id": "functions.get_weather:0", "name": "get_weather", "input": {"city": "Beijing"}}
    ]
    assert kimi.last_upstream_body()["tool_choice"] == "auto"


def test_stream_carries_tool_chunks_and_a_terminal_with_tools(kimi: Front) -> None:
    body = task(tools=[WEATHER], deliveryMethod="stream", settings={"thinkingLevel": "low"})
    headers = {"Authorization": f"Bearer {kimi.key}", "Accept": "text/event-stream"}
    frames: list[Any] = []
    with httpx.stream("POST", f"{kimi.server.base_url}/v1", json=[body], headers=headers, timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:"):
                payload = line.removeprefix("data:").strip()
                frames.append(payload if payload == "[DONE]" else json.loads(payload))
    assert frames[-1] == "[DONE]"
    chunks = frames[:-1]
    reasoning = "".join(c["delta"].get("reasoningContent", "") for c in chunks)
    assert reasoning == "The user asks; answer briefly."
    calls = [t for c in chunks for t in c["delta"].get("tools", ())]
    expected = {"id": "functions.get_weather:0", "name": "get_weather", "input": {"city": "Beijing"}}
    assert calls == [expected]
    terminal = chunks[-1]
    assert terminal["finishReason"] == "stop" and terminal["tools"] == [expected]
    assert terminal["reasoningContent"] == [reasoning]


@pytest.mark.parametrize(
    ("fields", "code", "param"),
    [
        # No search backend here (no SearXNG, nothing in the local index): refused naming `tools`.
        ({"tools": [WEATHER, {"type": "search"}]}, "unsupportedFeature", "tools"),
        ({"tools": [{"type": "codeInterpreter"}] * 2}, "invalidTools", "tools.1.type"),
        ({"tools": [WEATHER, WEATHER]}, "invalidTools", "tools.1.name"),
        ({"toolChoice": {"type": "any"}}, "invalidToolChoice", "toolChoice"),
    ],
)
def test_refused_by_name(kimi: Front, fields: dict[str, Any], code: str, param: str) -> None:
    reply = post(kimi, task(**fields))
    assert reply.status_code == 400, reply.text
    error = reply.json()["errors"][0]
    assert (error["code"], error["parameter"]) == (code, param)
