"""Logprobs on the Responses API (issue 20: the OpenAI-compatible protocols return them), through
the official openai SDK against the embedded model: `include: ["message.output_text.logprobs"]`
with `top_logprobs`, on the output text, on each streamed delta and on the `.done` events."""

from __future__ import annotations

import math

from openai import AsyncOpenAI

from tests.protocols.openai.support import MODEL

INCLUDE = ["message.output_text.logprobs"]


async def test_created_output_text_carries_its_tokens_logprobs(client: AsyncOpenAI) -> None:
    reply = await client.responses.create(
        model=MODEL,
        input="Name three colours.",
        max_output_tokens=12,
        include=INCLUDE,  # type: ignore[list-item]
        top_logprobs=5,
        temperature=0,
        store=False,
    )
    [message] = [item for item in reply.output if item.type == "message"]
    [part] = message.content
    assert part.type == "output_text" and part.logprobs
    for entry in part.logprobs:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 5
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token or not entry.token.isascii()
        assert all(t.logprob <= entry.top_logprobs[0].logprob + 1e-6 for t in entry.top_logprobs)
        # greedy: the token chosen is the most likely one
        assert math.isclose(entry.logprob, entry.top_logprobs[0].logprob, abs_tol=1e-4)
    assert "".join(e.token for e in part.logprobs).strip() == part.text.strip()


async def test_without_include_there_are_none(client: AsyncOpenAI) -> None:
    reply = await client.responses.create(model=MODEL, input="Hi.", max_output_tokens=4, store=False)
    [message] = [item for item in reply.output if item.type == "message"]
    assert message.content[0].logprobs == []  # type: ignore[union-attr]


async def test_streamed_deltas_carry_their_tokens(client: AsyncOpenAI) -> None:
    deltas: list[tuple[str, list[str]]] = []
    done_tokens: list[str] = []
    async with client.responses.stream(
        model=MODEL,
        input="Count to five.",
        max_output_tokens=12,
        include=INCLUDE,  # type: ignore[list-item]
        top_logprobs=2,
        store=False,
    ) as stream:
        async for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append((event.delta, [lp.token for lp in event.logprobs]))
                assert all(lp.logprob <= 0 and len(lp.top_logprobs or []) == 2 for lp in event.logprobs)
            elif event.type == "response.output_text.done":
                done_tokens = [lp.token for lp in event.logprobs]
    assert deltas and all(tokens for _, tokens in deltas)
    assert done_tokens == [t for _, tokens in deltas for t in tokens]
