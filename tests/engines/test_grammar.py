"""Grammars through llguidance, JSON closed at max_tokens, and the prefix cache per account."""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from dataclasses import replace

import jsonschema  # type: ignore[import-untyped]
import pytest

from kimiserve.domain.types import Constraint, GenerationRequest
from kimiserve.engines.llamacpp import LlamaCppEngine
from kimiserve.errors import GrammarError
from tests.engines.test_llamacpp import STORY, ask, run


def constrained(schema: object, max_tokens: int = 60, seed: int = 0) -> GenerationRequest:
    request = ask(
        "Describe a user of our website as JSON.", temperature=1.0, seed=seed, max_tokens=max_tokens
    )
    return replace(request, constraint=Constraint(json_schema=json.dumps(schema)))


def assert_valid_or_cut(text: str, schema: object, reason: str) -> None:
    """The rule of `jsonclose.py`: complete output validates; output cut by max_tokens either
    was closed into a value that validates, or is the text as cut, which does not parse."""
    try:
        value = json.loads(text)
    except ValueError:
        assert reason == "length", text
        return
    jsonschema.validate(value, schema)
    assert not re.search(r'"":0[}\]]*$', text), text  # the closing's old invention, `"":0`


def nested(depth: int) -> dict[str, object]:
    schema: dict[str, object] = {"type": "string", "maxLength": 8}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}, "required": ["x"]}
    return schema


CRASHERS = {
    "large maxLength": {
        "type": "object",
        "properties": {"a": {"type": "string", "maxLength": 32767}},
        "required": ["a"],
    },
    "large maxItems": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 100000},
    "deep nesting": nested(200),
    "long alternation": {"enum": [f"value-{i}-{i * 7919 % 10007}" for i in range(5000)]},
    "many patterns": {
        "type": "object",
        "properties": {
            f"p{i}": {"type": "string", "pattern": f"^([a-z]{{2,5}}-){{1,4}}[0-9]{{{i % 5 + 1}}}$"}
            for i in range(60)
        },
    },
}


@pytest.mark.parametrize("name", list(CRASHERS))
async def test_crashing_kinds_of_schema_give_a_result_or_a_400(engine: LlamaCppEngine, name: str) -> None:
    schema = CRASHERS[name]
    others = [
        asyncio.create_task(run(engine, ask(STORY, temperature=0.8, seed=i, max_tokens=24))) for i in range(2)
    ]
    request = constrained(schema, max_tokens=40)
    try:
        await engine.check(request)
    except GrammarError as exc:
        assert exc.status == 400 and exc.parameter == "constraint"
    else:
        result = await run(engine, request)
        assert result.finished.reason in {"stop", "length"}
        assert_valid_or_cut(result.text, schema, result.finished.reason)
    for other in await asyncio.gather(*others):  # the streams beside it finished
        assert other.usage.completion_tokens == 24 or other.finished.reason == "stop"
    assert (await engine.health()).ok
    assert engine.restarts == 0


async def test_a_schema_over_the_compile_budget_is_a_400_not_a_hang(engine: LlamaCppEngine) -> None:
    huge = {"type": "object", "properties": {f"k{i}": nested(30) for i in range(4000)}}
    started = time.monotonic()
    with pytest.raises(GrammarError) as caught:
        await engine.check(constrained(huge))
    assert caught.value.parameter == "constraint"
    assert time.monotonic() - started < engine.config.grammar_budget_s + 5


OPEN_SCHEMA = {
    "type": "object",
    "properties": {
        "story": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "meta": {"type": "object", "properties": {"words": {"type": "integer"}}},
    },
    "required": ["story"],
}


@pytest.mark.parametrize("max_tokens", [3, 8, 12, 25])
async def test_json_is_closed_when_max_tokens_runs_out(engine: LlamaCppEngine, max_tokens: int) -> None:
    """Closed into a valid value once the budget can hold `{"story":""}` (~6 tokens); below
    that the closing would break the schema, so the text is returned as cut."""
    request = replace(
        ask("Write a long story as JSON with a story field.", temperature=1.0, seed=max_tokens),
        constraint=Constraint(json_schema=json.dumps(OPEN_SCHEMA)),
    )
    request = replace(request, sampling=replace(request.sampling, max_tokens=max_tokens))
    result = await run(engine, request)
    assert result.usage.completion_tokens <= max_tokens
    assert result.finished.reason == "length", result.text
    assert_valid_or_cut(result.text, OPEN_SCHEMA, result.finished.reason)
    if max_tokens >= 8:
        jsonschema.validate(json.loads(result.text), OPEN_SCHEMA)


STRICT_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "email": {"type": "string"},
    },
    "required": ["name", "age", "email"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("max_tokens", [2, 5, 14, 30])
async def test_json_that_cannot_close_validly_is_returned_as_cut(
    engine: LlamaCppEngine, max_tokens: int
) -> None:
    """Issue 21: `max_tokens: 5` under a strict schema gave `{"":0}`. A closing that breaks the
    schema (required keys unwritten) is not made: the text is the raw cut, finish `length`."""
    request = replace(
        ask("Describe a user as JSON.", temperature=1.0, seed=max_tokens, max_tokens=max_tokens),
        constraint=Constraint(json_schema=json.dumps(STRICT_SCHEMA)),
    )
    result = await run(engine, request)
    assert result.usage.completion_tokens <= max_tokens
    assert result.text.startswith("{")
    assert_valid_or_cut(result.text, STRICT_SCHEMA, result.finished.reason)
    if max_tokens <= 5:  # too short to write the three keys: nothing may close it
        assert result.finished.reason == "length"
        assert result.usage.completion_tokens == max_tokens  # sampled to the end, nothing forced
        with pytest.raises(ValueError):
            json.loads(result.text)


@pytest.mark.parametrize("max_tokens", [3, 6, 10, 16])
async def test_json_object_cut_is_closed_without_an_invented_key(
    engine: LlamaCppEngine, max_tokens: int
) -> None:
    """`response_format: json_object` (the schema `{"type": "object"}`, issue 20): closed when
    the closing invents no key, else cut as it stands; never `"":0`."""
    schema = {"type": "object"}
    request = replace(
        ask("Describe a user as JSON.", temperature=1.0, seed=max_tokens, max_tokens=max_tokens),
        constraint=Constraint(json_schema=json.dumps(schema)),
    )
    result = await run(engine, request)
    assert result.usage.completion_tokens <= max_tokens
    assert_valid_or_cut(result.text, schema, result.finished.reason)


async def test_prefix_cache_is_never_shared_across_scopes(engine: LlamaCppEngine) -> None:
    prompt = ask("Account A's secret plan: " + "buy low, sell high. " * 20, temperature=0, max_tokens=2)
    a = replace(prompt, cache_scope="account-a")
    b = replace(prompt, cache_scope="account-b")
    await run(engine, a)
    assert (await run(engine, a)).usage.cached_tokens > 50  # the same account reuses its prefix
    assert (await run(engine, b)).usage.cached_tokens == 0  # another account never does
    assert (await run(engine, b)).usage.cached_tokens > 50  # ... only its own
    unscoped = await run(engine, replace(prompt, cache_scope=None))
    # at most the chat template's system preamble, cached by earlier unscoped requests
    assert unscoped.usage.cached_tokens < 40


SLOW_GRAMMAR = 'start: w+\nw: /[a-z]*q[a-z]*z[a-z]*/ | /[a-z]*x[a-z]{3,9}y/ | /(..)*k(...)*m/ | " "'


async def test_a_slow_grammar_does_not_stall_an_unconstrained_request(engine: LlamaCppEngine) -> None:
    """The baseline is the same short request beside an unconstrained long stream, so batching two
    sequences costs both runs alike; a grammar computed on the decode step would multiply it."""
    short = ask("Say something.", temperature=0.8, seed=3, max_tokens=8, ignore_eos=True)

    async def timed_beside(long: GenerationRequest) -> float:
        stream = engine.generate(long)
        await stream.__anext__()  # the long sequence is decoding
        try:
            times = []
            for _ in range(3):
                started = time.perf_counter()
                await run(engine, short)
                times.append(time.perf_counter() - started)
            return statistics.median(times)
        finally:
            await stream.aclose()

    long = ask(STORY, temperature=1.0, seed=1, max_tokens=400)
    plain = await timed_beside(long)
    slow = await timed_beside(replace(long, constraint=Constraint(grammar=SLOW_GRAMMAR)))
    assert slow < 2 * plain, f"beside a plain stream {plain:.2f} s, beside the grammar {slow:.2f} s"
