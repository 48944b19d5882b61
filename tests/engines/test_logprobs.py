"""Token logprobs: the log-softmax itself, and the embedded engine on the real model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kimiserve.domain.types import (
    Constraint,
    Event,
    GenerationRequest,
    Message,
    ReasoningDelta,
    Sampling,
    TextDelta,
    TokenLogprob,
)
from kimiserve.engines.llamacpp import LlamaCppEngine
from kimiserve.engines.llamacpp.logprobs import token_logprob


def piece(token: int) -> bytes:
    return f"t{token}".encode()


def test_log_softmax_of_raw_logits_with_top_alternatives_in_order() -> None:
    row = np.array([1.0, 3.0, 2.0, 3.0, -np.inf], dtype=np.float32)
    total = math.log(sum(math.exp(x) for x in (1.0, 3.0, 2.0, 3.0)))
    entry = token_logprob(row, 2, 3, piece)
    assert entry.token == "t2" and entry.token_bytes == b"t2"
    assert entry.logprob == pytest.approx(2.0 - total)
    # most likely first; equal logits in token-id order
    assert [t.token for t in entry.top] == ["t1", "t3", "t2"]
    assert [t.logprob for t in entry.top] == pytest.approx([3.0 - total, 3.0 - total, 2.0 - total])
    assert all(t.top == () for t in entry.top)
    assert token_logprob(row, 4, 0, piece).logprob == -math.inf  # a banned token, no alternatives asked
    assert len(token_logprob(row, 0, 20, piece).top) == 5  # never more than the vocabulary


def test_text_that_is_not_utf8_alone_keeps_its_bytes() -> None:
    entry = token_logprob(np.zeros(2, dtype=np.float32), 0, 1, lambda _: b"\xe2\x82")
    assert entry.token_bytes == b"\xe2\x82" and entry.token == "\ufffd"
    assert entry.logprob == pytest.approx(math.log(0.5))


def ask(text: str, **sampling: object) -> GenerationRequest:
    return GenerationRequest(
        model="smollm2",
        messages=(Message("user", text),),
        sampling=Sampling(**sampling),  # type: ignore[arg-type]
    )


async def deltas(engine: LlamaCppEngine, request: GenerationRequest) -> list[TextDelta]:
    events: list[Event] = [e async for e in engine.generate(request)]
    return [e for e in events if isinstance(e, TextDelta)]


def entries(found: list[TextDelta]) -> list[TokenLogprob]:
    out: list[TokenLogprob] = []
    for delta in found:
        assert delta.logprobs, delta  # every text delta carries the tokens it came from
        assert "".join(e.token for e in delta.logprobs) == delta.text
        out.extend(delta.logprobs)
    return out


async def test_greedy_tokens_are_the_top_alternative_and_join_to_the_text(engine: LlamaCppEngine) -> None:
    request = ask("What is the best book?", temperature=0.0, max_tokens=16, logprobs=5)
    found = await deltas(engine, request)
    tokens = entries(found)
    assert len(tokens) == 16
    assert b"".join(e.token_bytes for e in tokens).decode() == "".join(d.text for d in found)
    for entry in tokens:
        assert entry.logprob <= 0.0
        assert len(entry.top) == 5
        values = [t.logprob for t in entry.top]
        assert values == sorted(values, reverse=True)
        assert sum(math.exp(v) for v in values) <= 1.0 + 1e-6
        # greedy picks the raw argmax: the token is its own first alternative, same logprob
        assert (entry.top[0].token_bytes, entry.top[0].logprob) == (entry.token_bytes, entry.logprob)
    # asking for logprobs does not change what is sampled, and costs nothing when not asked
    plain = await deltas(engine, ask("What is the best book?", temperature=0.0, max_tokens=16))
    assert [d.text for d in plain] == [d.text for d in found]
    assert all(d.logprobs is None for d in plain)


async def test_sampled_tokens_have_logprobs_of_the_raw_logits(engine: LlamaCppEngine) -> None:
    # At temperature 2 the chosen token is often not the most likely one: its logprob (raw
    # logits, before temperature) is then below the first alternative's.
    request = ask("Name a colour.", temperature=2.0, seed=3, max_tokens=24, logprobs=0)
    tokens = entries(await deltas(engine, request))
    assert tokens and all(e.top == () and e.logprob <= 0.0 for e in tokens)
    ranked = await deltas(engine, ask("Name a colour.", temperature=2.0, seed=3, max_tokens=24, logprobs=20))
    again = entries(ranked)
    assert [e.token for e in again] == [e.token for e in tokens]
    assert [e.logprob for e in again] == pytest.approx([e.logprob for e in tokens])
    assert any(e.logprob < e.top[0].logprob for e in again)


async def test_constrained_answer_carries_logprobs(engine: LlamaCppEngine) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    request = GenerationRequest(
        model="smollm2",
        messages=(Message("user", "Give a number as JSON."),),
        sampling=Sampling(temperature=0.0, max_tokens=20, logprobs=2),
        constraint=Constraint(json_schema=json.dumps(schema)),
    )
    found = await deltas(engine, request)
    tokens = entries(found)
    assert "n" in json.loads("".join(d.text for d in found))
    assert all(len(e.top) == 2 and e.logprob <= 0.0 for e in tokens)


async def test_reasoning_has_none_the_answer_has_them(engine: LlamaCppEngine) -> None:
    request = GenerationRequest(
        model="smollm2",
        messages=(Message("user", "Why is the sky blue?"),),
        sampling=Sampling(temperature=0.0, max_tokens=64, logprobs=1),
        thinking="low",
    )
    events = [e async for e in engine.generate(request)]
    assert any(isinstance(e, ReasoningDelta) for e in events)
    texts = [e for e in events if isinstance(e, TextDelta)]
    assert texts and all(d.logprobs for d in texts)
