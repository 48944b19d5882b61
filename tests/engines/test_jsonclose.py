"""JsonTail: every prefix of JSON text plus its closing parses, and the closing is short."""

from __future__ import annotations

import json
import random
from typing import Any

from kimiserve.engines.llamacpp.jsonclose import JsonTail


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
