"""String formats enforced by the grammars (json_schema and tool calls) on the real embedded
model, the schema rewrites that keep outputs valid, and refusals of what cannot be enforced."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest

from kimiserve.domain.types import (
    Constraint,
    Finished,
    GenerationRequest,
    Message,
    Sampling,
    TextDelta,
    ToolCallEvent,
    ToolChoice,
    ToolSpec,
)
from kimiserve.engines.llamacpp import LlamaCppConfig, LlamaCppEngine
from kimiserve.engines.llamacpp.schemas import enforceable
from kimiserve.errors import GrammarError

FORMATS = ("date", "date-time", "time", "email", "uuid", "uri", "ipv4", "uri-reference", "json-pointer")


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine(LlamaCppConfig(n_ctx=4096, max_sequences=4, prompt_chunk=256))
    yield engine
    engine.close()


def holding(fmt: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"v": {"type": "string", "format": fmt}}, "required": ["v"]}


def valid(schema: object, value: object) -> bool:
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    return bool(jsonschema.Draft202012Validator(schema, format_checker=checker).is_valid(value))


def json_request(schema: object, seed: int, max_tokens: int = 80, what: str = "value") -> GenerationRequest:
    return GenerationRequest(
        model="smollm2",
        messages=(Message("user", f"Give an example {what} as JSON."),),
        sampling=Sampling(temperature=1.0, seed=seed, max_tokens=max_tokens),
        constraint=Constraint(json_schema=json.dumps(schema)),
    )


def tool_request(schema: object, seed: int, max_tokens: int = 96, what: str = "value") -> GenerationRequest:
    return GenerationRequest(
        model="smollm2",
        messages=(Message("user", f"Record an example {what}."),),
        sampling=Sampling(temperature=1.0, seed=seed, max_tokens=max_tokens),
        tools=(ToolSpec("record", "Record a value.", json.dumps(schema)),),
        tool_choice=ToolChoice("named", "record"),
    )


@pytest.mark.timeout(600)
@pytest.mark.parametrize("fmt", FORMATS)
async def test_each_format_yields_only_valid_strings(engine: LlamaCppEngine, fmt: str) -> None:
    schema = holding(fmt)
    for seed in (1,):
        events = [e async for e in engine.generate(json_request(schema, seed, what=fmt))]
        text = "".join(e.text for e in events if isinstance(e, TextDelta))
        assert events[-1] == Finished("stop"), text
        assert valid(schema, json.loads(text)), text
        calls = [
            e.call async for e in engine.generate(tool_request(schema, seed)) if isinstance(e, ToolCallEvent)
        ]
        assert len(calls) == 1 and valid(schema, json.loads(calls[0].arguments)), calls


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "object", "propertyNames": {"maxLength": 3}}, "propertyNames"),
        ({"type": "string", "pattern": "^(?!x)[a-z]+$"}, "look-around"),
        ({"type": "string", "not": {"enum": ["a"]}}, "not"),
    ],
)
async def test_what_cannot_be_enforced_is_refused_naming_it(
    engine: LlamaCppEngine, schema: dict[str, Any], keyword: str
) -> None:
    with pytest.raises(GrammarError) as caught:
        await engine.check(json_request(schema, 0))
    assert caught.value.parameter == "constraint" and keyword in caught.value.message
    with pytest.raises(GrammarError) as caught:
        await engine.check(tool_request({"type": "object", "properties": {"x": schema}}, 0))
    assert caught.value.parameter == "tools[0].schema" and keyword in caught.value.message


def test_rewrites_narrow_the_schema_and_drop_annotations() -> None:
    schema = {
        "type": "object",
        "properties": {
            "shape": {"type": "string"},
            "street": {"type": "string"},
            "extended": {"type": "string"},
            "n": {"type": "integer", "format": "int32"},
            "nothing": {"not": {}},
            "scalar": {"not": {"type": ["array", "object", "null"]}},
            "dependencies": {"type": "string", "format": "iri"},
        },
        "dependencies": {"shape": ["circle"], "extended": ["street"]},
    }
    out = enforceable(schema)
    assert out["properties"]["shape"] is False  # its dependency `circle` is not declared
    assert out["required"] == ["street"] and "dependencies" not in out
    assert out["properties"]["n"] == {"type": "integer"}
    assert out["properties"]["nothing"] is False
    assert out["properties"]["scalar"] == {"type": ["string", "number", "integer", "boolean"]}
    assert out["properties"]["dependencies"] == {"type": "string", "format": "uri"}  # a name, not a keyword
    assert enforceable({"type": "string", "format": "date"})["pattern"].startswith("^[0-9]{4}-")


ONE_OF_SETS = [
    [["radius"], ["side"], ["base", "height"]],  # JSONSchemaBench Glaiveai2K/calculate_area_6fd20e8d
    [["a"], ["a", "b"]],  # `a` alone is the only output matching one branch
    [["a", "b"], ["b", "c"], ["c"]],
    [["a"], ["a"]],  # nothing matches exactly one
]


@pytest.mark.parametrize("sets", ONE_OF_SETS)
def test_one_of_required_sets_admits_only_what_matches_exactly_one(sets: list[list[str]]) -> None:
    names = sorted({n for s in sets for n in s})
    original = {
        "type": "object",
        "properties": {n: {"type": "integer"} for n in names},
        "oneOf": [{"required": s} for s in sets],
    }
    rewritten = enforceable(original)
    admitted = []
    for mask in range(2 ** len(names)):  # every object over the declared keys
        value = {n: 1 for i, n in enumerate(names) if mask >> i & 1}
        if rewritten is not False and jsonschema.Draft202012Validator(rewritten).is_valid(value):
            admitted.append(set(value))
            assert jsonschema.Draft202012Validator(original).is_valid(value), value
    # narrower, never wider: each branch's own keys alone, where that matches one branch only
    unique = [set(s) for s in sets if jsonschema.Draft202012Validator(original).is_valid(dict.fromkeys(s, 1))]
    assert all(keys in admitted for keys in unique), (admitted, unique)
    assert (not admitted) == (sets == [["a"], ["a"]])


async def test_an_unsatisfiable_schema_is_a_400_that_says_so(engine: LlamaCppEngine) -> None:
    """All four keys required, and exactly one of three sets of them: no object is valid."""
    schema = {
        "type": "object",
        "properties": {n: {"type": "number"} for n in ("radius", "side", "base", "height")},
        "required": ["radius", "side", "base", "height"],
        "oneOf": [{"required": ["radius"]}, {"required": ["side"]}, {"required": ["base", "height"]}],
    }
    with pytest.raises(GrammarError) as caught:
        await engine.check(json_request(schema, 0))
    assert caught.value.parameter == "constraint" and "admits no value" in caught.value.message
