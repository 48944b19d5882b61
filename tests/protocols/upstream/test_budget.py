"""Reasoning budgets over the wire through both protocols: OpenAI `reasoning_effort` (streamed,
official SDK) and Runware `thinkingLevel` (HTTP), via a real kimiserve in front of the stand-in
vLLM, which reasons as long as told (`#reason-N`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from openai import AsyncOpenAI

from kimiserve.domain.types import THINKING_BUDGETS
from tests.protocols.upstream.conftest import Front

MODEL = "kimi-k2.6"
LOW = THINKING_BUDGETS["low"]


@pytest.fixture
async def client(kimi: Front) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{kimi.server.base_url}/v1", api_key=kimi.key, max_retries=0) as c:
        yield c


def upstream_requests(kimi: Front) -> int:
    return len(kimi.standin.stats()["requests"])


async def test_openai_reasoning_effort_low_streams_reasoning_cut_then_the_answer(
    client: AsyncOpenAI, kimi: Front
) -> None:
    before = upstream_requests(kimi)
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "ponder this #reason-900"}],
        reasoning_effort="low",
        max_completion_tokens=2000,
        stream=True,
        stream_options={"include_usage": True},
    )
    reasoning: list[str] = []
    content, usage, finish = "", None, None
    async for chunk in stream:
        usage = chunk.usage or usage
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        piece = (delta.model_extra or {}).get("reasoning_content")
        if piece:
            assert not content, "reasoning after the answer began"
            reasoning.append(piece)
        content += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(reasoning).split() == [f"step{i}" for i in range(LOW)]
    assert content == "ponder this #reason-900" and finish == "stop"
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == LOW
    assert usage.completion_tokens == LOW + 3
    assert upstream_requests(kimi) - before == 2  # the cut stream and its continuation
    assert kimi.last_upstream_body()["continue_final_message"] is True


def test_runware_thinking_level_low_returns_reasoning_cut_then_the_text(kimi: Front) -> None:
    before = upstream_requests(kimi)
    task = {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": MODEL,
        "messages": [{"role": "user", "content": "weigh it #reason-700"}],
        "settings": {"thinkingLevel": "low", "maxTokens": 2000},
        "includeUsage": True,
    }
    headers = {"Authorization": f"Bearer {kimi.key}"}
    reply = httpx.post(f"{kimi.server.base_url}/v1", json=[task], headers=headers, timeout=30)
    assert reply.status_code == 200, reply.text
    item = reply.json()["data"][0]
    assert item["text"] == "weigh it #reason-700" and item["finishReason"] == "stop"
    [reasoning] = item["reasoningContent"]
    assert reasoning.split() == [f"step{i}" for i in range(LOW)]
    assert item["usage"]["thinkingTokens"] == LOW and item["usage"]["completionTokens"] == LOW + 3
    assert upstream_requests(kimi) - before == 2


def test_runware_thinking_level_none_sends_thinking_off_once(kimi: Front) -> None:
    before = upstream_requests(kimi)
    task = {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": MODEL,
        "messages": [{"role": "user", "content": "quick #reason-700"}],
        "settings": {"thinkingLevel": "none"},
    }
    headers = {"Authorization": f"Bearer {kimi.key}"}
    reply = httpx.post(f"{kimi.server.base_url}/v1", json=[task], headers=headers, timeout=30)
    assert reply.status_code == 200, reply.text
    item = reply.json()["data"][0]
    assert item["text"] == "quick #reason-700" and "reasoningContent" not in item
    assert upstream_requests(kimi) - before == 1
    assert kimi.last_upstream_body()["chat_template_kwargs"] == {"thinking": False}
