"""K2.6's recorded failures through a real kimiserve: the OpenAI SDK and Runware's HTTP API see a
repaired answer, charged as one request; `/metrics` counts the repair. Preserved thinking
(`thinking.keep: "all"`) reaches the upstream; without it, earlier reasoning is dropped."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.platform.support import assert_ledger_consistent
from tests.protocols.openai.support import usage_rows
from tests.protocols.upstream.conftest import WEATHER_SCHEMA, Front
from tests.protocols.upstream.test_interrupted import Metered, cost, metered, openai_client

__all__ = ["metered"]  # the metered front, a fixture of this module too

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}
HISTORY: list[Any] = [
    {"role": "user", "content": "weather in Paris? #empty-answer"},
    {
        "role": "assistant",
        "content": None,
        "reasoning_content": "I should call the tool.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
]


def repairs(base_url: str, kind: str) -> float:
    """`kimiserve_repairs_total` of one kind, every engine's, as prometheus-client parses it."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "kimiserve_repairs_total" and s.labels.get("kind") == kind
    )


async def test_empty_tool_follow_up_is_repaired_and_charged_as_one_request(metered: Metered) -> None:
    metered.revive()
    before = metered.account()
    counted = repairs(metered.server.base_url, "empty_answer")
    async with openai_client(metered) as client:
        reply = await client.chat.completions.create(
            model="kimi-k2.6",
            messages=HISTORY,
            tools=[TOOL],
            reasoning_effort="high",  # type: ignore[list-item]
        )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Beijing"}  # type: ignore[union-attr]
    # One prompt (4 + 0 + 1 words, + 1 per message), the first request's reasoning and the call.
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (8, 3 + 6)
    [row] = usage_rows(metered.data, reply.id)
    assert (row["prompt_tokens"], row["completion_tokens"], row["reasoning_tokens"]) == (8, 9, 3)
    assert row["cost_micros"] == cost(8, 9)
    after = metered.account()
    assert_ledger_consistent(after)
    assert before["balance_micros"] - after["balance_micros"] == row["cost_micros"]
    assert repairs(metered.server.base_url, "empty_answer") == counted + 1


async def test_reasoning_only_twice_is_a_clear_error_in_the_stream(metered: Metered) -> None:
    import openai
    import pytest

    metered.revive()
    async with openai_client(metered) as client:
        stream = await client.chat.completions.create(
            model="kimi-k2.6",
            messages=[{"role": "user", "content": "hi #reasoning-only-always"}],
            reasoning_effort="high",
            stream=True,
        )
        content = ""
        with pytest.raises(openai.APIError) as caught:
            async for chunk in stream:
                content += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert content == "" and "without an answer or a tool call twice" in caught.value.message


def test_runware_raw_markers_in_content_become_the_items_tools(kimi: Front) -> None:
    body = {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "moonshotai:kimi@2.6",
        "messages": [{"role": "user", "content": "weather? #leak-call-id"}],
        "tools": [{"type": "function", "name": "get_weather", "schema": WEATHER_SCHEMA}],
        "includeUsage": True,
    }
    headers = {"Authorization": f"Bearer {kimi.key}"}
    reply = httpx.post(f"{kimi.server.base_url}/v1", json=[body], headers=headers, timeout=30)
    assert reply.status_code == 200, reply.text
    item = reply.json()["data"][0]
    assert item["text"] == "Checking. " and "<|" not in json.dumps(item)
    assert item["tools"] == [
        {"id": "functions.get_weather:0", "name": "get_weather", "input": {"city": "Beijing"}}
    ]
    assert repairs(kimi.server.base_url, "tool_markers") >= 1
    assert repairs(kimi.server.base_url, "tool_call_id") >= 1


async def test_thinking_keep_all_sends_reasoning_back_with_preserve_thinking(kimi: Front) -> None:
    from openai import AsyncOpenAI

    history = [{**m, "content": "weather in Paris?"} if m["role"] == "user" else m for m in HISTORY]
    async with AsyncOpenAI(base_url=f"{kimi.server.base_url}/v1", api_key=kimi.key, max_retries=0) as client:
        await client.chat.completions.create(model="kimi-k2.6", messages=history, tools=[TOOL])  # type: ignore[list-item]
        dropped = kimi.last_upstream_body()
        await client.chat.completions.create(
            model="kimi-k2.6",
            messages=history,
            tools=[TOOL],  # type: ignore[list-item]
            extra_body={"thinking": {"type": "enabled", "keep": "all"}},
        )
        kept = kimi.last_upstream_body()
    assert "reasoning_content" not in dropped["messages"][1]
    assert "preserve_thinking" not in dropped["chat_template_kwargs"]
    assert kept["messages"][1]["reasoning_content"] == "I should call the tool."
    assert kept["chat_template_kwargs"] == {"thinking": True, "preserve_thinking": True}
