"""JsonGuard: numbers end by their 17th digit and loops wind their container up, only ever by
narrowing the grammar's tokens; plus the same through the real model (`engine`).

The loop shapes are the outputs bench/tools.py recorded on JSONSchemaBench's GlaiveAI schemas
before the guard (each was cut by max_tokens): bench/RESULTS.md."""

from __future__ import annotations

import json
from dataclasses import replace

import jsonschema  # type: ignore[import-untyped]
import numpy as np
import pytest

from kimiserve.domain.types import Constraint, GenerationRequest
from kimiserve.engines.llamacpp import LlamaCppEngine
from kimiserve.engines.llamacpp.jsonclose import JsonTail
from kimiserve.engines.llamacpp.jsonguard import MAX_DIGITS, JsonGuard, TokenClasses, looping
from tests.engines.test_llamacpp import ask, run

RECORDED_LOOPS = [
    b'{"radius":' + b"1" * 40,
    b'{"a":4649356748924649356748924649356748924649',
    b'{"data":[4.0,4.0,4.0,4.0,4.0,4.0,4.0,4.0,4.0,4.0',
    b'{"keywords":["finance","finance","finance","finance","fin',
    b'{"passport_number":"678901234567890123456789012345678901234',
    b'{"id":"SCOPE_02_20_2019_31_SCOPE_02_20_2019_32_SCOPE_02_20_2019_33_SCOPE_02_20_2019_34_',
    b'{"data":['
    + b'{"measurement":"health_data","timestamp":"2022-01-01T12:30:00.00000000Z","value":1.23},' * 3
    + b'{"measurement":"heal',
]
NOT_LOOPS = [
    b'{"numbers":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20]',
    b'{"text":"The quick brown fox jumps over the lazy dog, then runs off to the hills',
    b'{"a":"0378111198229304034973527624176241386246498754612584792451018015954411417',
    b'[{"name":"Ada","age":36},{"name":"Grace","age":85},{"name":"Linus","age":54}',
    b'{"date":"2024-03-01","from":"2024-03-02","to":"2024-03-09","at":"2024-04-1',
]


@pytest.mark.parametrize("data", RECORDED_LOOPS)
def test_recorded_loops_are_loops(data: bytes) -> None:
    assert looping(data)


@pytest.mark.parametrize("data", NOT_LOOPS)
def test_ordinary_json_is_not_a_loop(data: bytes) -> None:
    assert not looping(data)


VOCAB = [b"1", b"2", b".", b"e", b",", b"}", b"]", b"}]", b'"', b'"}', b'",', b"a", b"fin", b""]
TOKEN = {piece: i for i, piece in enumerate(VOCAB)}
CLASSES = TokenClasses.of(VOCAB)


def allowed(*pieces: bytes) -> np.ndarray:
    bits = np.zeros(len(VOCAB), dtype=bool)
    bits[[TOKEN[p] for p in pieces]] = True
    return bits


def picks(bits: np.ndarray) -> set[bytes]:
    return {VOCAB[i] for i in np.flatnonzero(bits)}


def fed(data: bytes) -> JsonTail:
    tail = JsonTail()
    tail.feed(data)
    return tail


def test_a_number_ends_by_its_17th_digit() -> None:
    grammar = allowed(b"1", b"2", b".", b"e", b",", b"}")
    short = b'{"x":' + b"12" * 4
    guard = JsonGuard(CLASSES)
    assert picks(guard.narrow(fed(short), short, grammar)) == picks(grammar)  # 8 digits: untouched
    long = b'{"x":3.' + b"1234567890123456"[: MAX_DIGITS - 1]
    assert fed(long).digits == MAX_DIGITS
    assert picks(guard.narrow(fed(long), long, grammar)) == {b",", b"}"}
    after_e = long + b"e"  # the exponent's digit is needed: nothing is dropped
    assert picks(guard.narrow(fed(after_e), after_e, allowed(b"1", b"2"))) == {b"1", b"2"}


def test_a_loop_in_an_array_closes_the_array_and_what_is_opened_inside() -> None:
    guard = JsonGuard(CLASSES)
    data = b'{"k":["finance","finance","finance","finance","fin'
    in_string = allowed(b"a", b"fin", b'"', b'",')  # in an array: `"}` is not allowed
    assert picks(guard.narrow(fed(data), data, in_string)) == {b'"'}  # only closers, then `"`-first
    data += b'"'
    assert picks(guard.narrow(fed(data), data, allowed(b",", b"]"))) == {b"]"}
    data += b"]"  # the array closed: the wind-up ends, the object goes on as the model likes
    assert picks(guard.narrow(fed(data), data, allowed(b",", b"}"))) == {b",", b"}"}
    assert guard.loops == 1


def test_a_loop_in_a_lone_string_ends_the_string() -> None:
    guard = JsonGuard(CLASSES)
    data = b'"' + b"fin" * 10
    assert picks(guard.narrow(fed(data), data, allowed(b"fin", b"a", b'"'))) == {b'"'}
    assert guard.loops == 1


def test_the_grammar_has_the_last_word() -> None:
    """Where the grammar allows no closing token (a required key to come), nothing is dropped."""
    guard = JsonGuard(CLASSES)
    data = b'{"a":[' + b"1," * 20 + b"1"
    assert picks(guard.narrow(fed(data), data, allowed(b"1", b","))) == {b","}  # the number ends
    assert picks(guard.narrow(fed(data), data, allowed(b"1"))) == {b"1"}


# ---- through the real model ------------------------------------------------------------------


def _constrained(prompt: str, schema: object, max_tokens: int) -> GenerationRequest:
    request = ask(prompt, temperature=0.0, max_tokens=max_tokens)
    return replace(request, constraint=Constraint(json_schema=json.dumps(schema)))


async def test_the_model_asked_for_endless_digits_writes_a_number_that_ends(engine: LlamaCppEngine) -> None:
    schema = {"type": "object", "properties": {"value": {"type": "number"}}, "required": ["value"]}
    request = _constrained("Write the number one hundred times: 1111111111111111111111111", schema, 120)
    result = await run(engine, request)
    assert result.finished.reason == "stop", result.text
    value = json.loads(result.text)
    jsonschema.validate(value, schema)
    assert sum(c.isdigit() for c in result.text) <= MAX_DIGITS + 3, result.text  # +3: an exponent


async def test_the_model_asked_to_repeat_an_item_ends_the_array(engine: LlamaCppEngine) -> None:
    """Greedy, this prompt gives `[4.0,4.0,…` until max_tokens without the guard."""
    schema = {
        "type": "object",
        "properties": {"values": {"type": "array", "items": {"type": "number"}}},
        "required": ["values"],
    }
    prompt = "Give the daily readings: 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0"
    result = await run(engine, _constrained(prompt, schema, 200))
    assert result.finished.reason == "stop", result.text
    jsonschema.validate(json.loads(result.text), schema)
