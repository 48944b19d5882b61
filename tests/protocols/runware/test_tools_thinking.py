"""Function tools and thinking on the embedded model: the official Runware SDK over the WebSocket,
and raw HTTP for what the SDK drops (its `IText` has no `tools` field)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest

from tests.protocols.runware.wire import connected_sdk
from tests.serverproc import ServerProcess

runware = pytest.importorskip("runware")
types = pytest.importorskip("runware.types")

pytestmark = pytest.mark.skipif(
    os.environ.get("KIMISERVE_ENGINE") == "fake", reason="needs the real engine's grammar and reasoning"
)

MODEL = "moonshotai:kimi@2.6"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "days": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather.", "schema": SCHEMA}
HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "tools": [{"id": "call_1", "name": "get_weather", "input": {"city": "Paris", "days": 1}}],
    },
    {"role": "tool", "id": "call_1", "content": '{"sky": "sunny", "temp": 21}'},
]


@pytest.fixture
async def sdk(server: ServerProcess, api_key: str) -> AsyncIterator[Any]:
    async with connected_sdk(server.base_url, api_key) as client:
        yield client


def task(**fields: Any) -> dict[str, Any]:
    return {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "includeUsage": True,
        **fields,
    }


def post(server: ServerProcess, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1", json=[body], headers={"Authorization": f"Bearer {key}"}, timeout=300
    )


@pytest.mark.parametrize(
    "choice", [{"type": "any"}, {"type": "tool", "name": "get_weather"}], ids=["any", "tool"]
)
def test_forced_call_in_the_result_matches_the_schema(
    server: ServerProcess, api_key: str, choice: Any
) -> None:
    response = post(server, api_key, task(tools=[WEATHER], toolChoice=choice, settings={"maxTokens": 80}))
    assert response.status_code == 200, response.text
    [item] = response.json()["data"]
    calls = item["tools"]
    assert calls and all(c["name"] == "get_weather" and c["id"] for c in calls)
    # Several calls may come in one turn (the default); one cut by maxTokens is the last.
    complete = calls[:-1] if item["finishReason"] == "length" else calls
    assert complete
    for call in complete:
        jsonschema.validate(call["input"], SCHEMA)
    if choice["type"] == "tool":
        assert len(calls) == 1  # a named choice calls that tool exactly once
    assert item["usage"]["completionTokens"] > 0


def test_forced_call_cut_by_max_tokens_is_named_without_input(server: ServerProcess, api_key: str) -> None:
    """Issue 21: a cut forced call is reported (no empty success): its id and name, no `input`
    (the arguments, cut inside, are not an object), finishReason `length`."""
    body = task(tools=[WEATHER], toolChoice={"type": "any"}, settings={"maxTokens": 18})
    response = post(server, api_key, body)
    assert response.status_code == 200, response.text
    [item] = response.json()["data"]
    assert item["finishReason"] == "length" and not item["text"]
    [call] = item["tools"]
    assert call["name"] == "get_weather" and call["id"] and "input" not in call
    assert item["usage"]["completionTokens"] == 18


def test_a_tool_result_history_and_none(server: ServerProcess, api_key: str) -> None:
    response = post(
        server,
        api_key,
        task(messages=HISTORY, tools=[WEATHER], toolChoice={"type": "none"}, settings={"maxTokens": 16}),
    )
    assert response.status_code == 200, response.text
    [item] = response.json()["data"]
    assert item["text"] and not item.get("tools")


def test_thinking_level_gives_reasoning_content_within_half_the_tokens(
    server: ServerProcess, api_key: str
) -> None:
    response = post(server, api_key, task(settings={"maxTokens": 48, "thinkingLevel": "low"}))
    assert response.status_code == 200, response.text
    [item] = response.json()["data"]
    usage = item["usage"]
    assert "".join(item["reasoningContent"]).strip() and item["text"].strip()
    assert 0 < usage["thinkingTokens"] <= 24 < usage["completionTokens"] + 24
    assert usage["completionTokens"] <= 48


async def test_sdk_tools_with_tool_result_history(sdk: Any) -> None:
    tool = types.ITextInferenceTool(
        name="get_weather", description="The weather.", schema=SCHEMA, toolType="function"
    )
    [item] = await sdk.textInference(
        types.ITextInference(
            model=MODEL,
            messages=[dict(m) for m in HISTORY],
            tools=[tool],
            settings=types.ISettings(maxTokens=24),
        )
    )
    assert item.status == "success" and item.finishReason in ("stop", "length", "tool_calls")
    forced = await sdk.textInference(
        types.ITextInference(
            model=MODEL,
            messages=[types.ITextInferenceMessage(role="user", content="Weather in Rome for 2 days?")],
            tools=[tool],
            toolChoice=types.ITextInferenceToolChoice(toolType="any"),
            settings=types.ISettings(maxTokens=80),
        )
    )
    assert forced[0].status == "success" and not forced[0].text  # the call is in `tools`, which IText drops


async def test_sdk_thinking_level_reasoning_content(sdk: Any) -> None:
    [item] = await sdk.textInference(
        types.ITextInference(
            model=MODEL,
            messages=[types.ITextInferenceMessage(role="user", content="Name a fruit.")],
            settings=types.ISettings(maxTokens=40, thinkingLevel="medium"),
        )
    )
    assert item.reasoningContent and "".join(item.reasoningContent).strip()
    assert item.text and item.text.strip()
    assert json.dumps(item.reasoningContent).count("</think>") == 0
