"""JsonTail: every prefix of JSON text plus its closing parses, the closing is short, and it is
used only when it invents no key and the closed value validates (SchemaCheck)."""

from __future__ import annotations

import json
import random
from typing import Any

from kimiserve.engines.llamacpp.jsonclose import JsonTail, SchemaCheck


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.choice(["obj", "arr", "str", "num", "lit"] if depth < 4 else ["str", "num", "lit"])
    if kind == "obj":
        return {f'k{i}\\"é': _random_value(rng, depth + 1) for i in range(rng.randint(0, 3))}
    if kind == "arr":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "str":
        return rng.choice(["", "plain", 'quote " and \\ slash', "uni ☃ \u0001 tab\t"])
    if kind == "num":
        return rng.choice([0, -12, 3.5, -0.25e-7, 12345678901234])
    return rng.choice([True, False, None])


def test_every_prefix_closes_to_valid_json() -> None:
    rng = random.Random(0)
    for _ in range(300):
        text = json.dumps(_random_value(rng), ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 1]))
        data = text.encode()
        for cut in range(len(data) + 1):
            tail = JsonTail()
            tail.feed(data[:cut])
            closing = tail.closing()
            assert closing is not None, (data[:cut],)
            completed = data[:cut] + closing.encode()
            json.loads(completed.decode("utf-8", errors="replace"))


def test_closings_are_the_shortest_endings() -> None:
    cases = {
        "": "{}",
        '{"a": "xy': '"}',
        '{"a": [1, 2': "]}",
        '{"a": [': "]}",
        '{"a": [1,': "0]}",
        '{"a"': ":0}",
        '{"a":': "0}",
        '{"a": 1,': '"":0}',
        '{"a": tr': "ue}",
        '{"a": -': "0}",
        '{"a": "\\': 'n"}',
        '{"a": "\\u00': '00"}',
        '{"a": {}}': "",
    }
    for prefix, closing in cases.items():
        tail = JsonTail()
        tail.feed(prefix.encode())
        assert tail.closing() == closing, prefix


def test_not_json_gives_no_closing() -> None:
    tail = JsonTail()
    tail.feed(b"hello")
    assert tail.closing() is None


def test_a_closing_inside_or_after_a_key_invents_one() -> None:
    inventing = ['{"a": 1,', '{"a": 1, "b', '{"', '{"a": {"x": 1, "y']
    closable = ["", "{", '{"a"', '{"a":', '{"a": "x', '{"a": [1,', '{"a": 1', '{"a": 1}']
    for prefix in inventing + closable:
        tail = JsonTail()
        tail.feed(prefix.encode())
        assert tail.invents_key == (prefix in inventing), prefix


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name"],
    "additionalProperties": False,
}


def test_schema_check_accepts_only_valid_closed_values() -> None:
    check = SchemaCheck(json.dumps(SCHEMA))
    assert check(b'{"name": "Jo"}')
    assert check(b'{"name": "Jo", "age": 0}')
    assert not check(b'{"age": 3}')  # a required key missing
    assert not check(b'{"name": "Jo", "":0}')  # an invented key
    assert not check(b'{"name": 0}')  # an invented value of the wrong type
    assert not check(b'{"name": "Jo"')  # not JSON
    assert SchemaCheck('{"type": "object"}')(b'{"a": [1, 0]}')


def test_a_schema_jsonschema_cannot_resolve_closes_nothing() -> None:
    check = SchemaCheck(json.dumps({"$ref": "https://example.invalid/schema.json"}))
    assert not check(b"{}")
