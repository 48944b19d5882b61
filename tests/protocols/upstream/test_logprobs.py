"""logprobs through an upstream: a real kimiserve in front of the stand-in vLLM, which returns
them in vLLM's shape (`tests/standin/README.md`); the openai SDK as the client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai import AsyncOpenAI

from tests.protocols.upstream.conftest import Front

MODEL = "kimi-k2.6"
ASK: Any = [{"role": "user", "content": "three little words"}]


@pytest.fixture
async def client(kimi: Front) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{kimi.server.base_url}/v1", api_key=kimi.key, max_retries=0) as c:
        yield c


def expected(top: int) -> list[tuple[str, float, list[str]]]:
    """What the stand-in sends for ASK: word i has logprob -0.25 (i + 1), alternatives itself
    then alt1, alt2..."""
    words = ["three", " little", " words"]
    return [(w, -0.25 * (i + 1), [w, *(f"alt{k}" for k in range(1, top))][:top]) for i, w in enumerate(words)]


async def test_logprobs_asked_upstream_and_returned(client: AsyncOpenAI, kimi: Front) -> None:
    reply = await client.chat.completions.create(
        model=MODEL, messages=ASK, reasoning_effort="none", logprobs=True, top_logprobs=2
    )
    body = kimi.last_upstream_body()
    assert (body["logprobs"], body["top_logprobs"]) == (True, 2)
    choice = reply.choices[0]
    assert choice.message.content == "three little words"
    assert choice.message.refusal is None
    assert choice.logprobs is not None and choice.logprobs.content is not None
    got = [(t.token, t.logprob, [a.token for a in t.top_logprobs]) for t in choice.logprobs.content]
    assert got == expected(2)
    assert all(bytes(t.bytes or []).decode() == t.token for t in choice.logprobs.content)


async def test_logprobs_streamed_per_chunk(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL, messages=ASK, reasoning_effort="none", logprobs=True, top_logprobs=3, stream=True
    )
    per_chunk = [
        (c.choices[0].delta.content, [t.token for t in c.choices[0].logprobs.content])
        async for c in stream
        if c.choices
        and c.choices[0].delta.content
        and c.choices[0].logprobs
        and c.choices[0].logprobs.content
    ]
    assert per_chunk == [("three", ["three"]), (" little", [" little"]), (" words", [" words"])]


async def test_not_asked_not_sent(client: AsyncOpenAI, kimi: Front) -> None:
    reply = await client.chat.completions.create(model=MODEL, messages=ASK, reasoning_effort="none")
    body = kimi.last_upstream_body()
    assert "logprobs" not in body and "top_logprobs" not in body
    assert reply.choices[0].logprobs is None
