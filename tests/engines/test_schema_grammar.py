"""Integer bounds in JSON-schema grammars: the GBNF matches exactly the integers in range."""

from __future__ import annotations

import random
import re

import pytest

from kimiserve.engines.llamacpp.schema_grammar import integer_range, schema_to_gbnf


def _as_regex(expr: str) -> re.Pattern[str]:
    """The GBNF subset integer_range emits (literals, classes, {n}, |, groups) as a regex."""
    body = re.sub(r'"(.)"', lambda m: re.escape(m.group(1)), expr).replace(" ", "")
    return re.compile(f"^(?:{body})$")


@pytest.mark.parametrize(
    ("lo", "hi"),
    [
        (0, 120),
        (1, 9),
        (-5, 5),
        (-130, -7),
        (7, None),
        (None, -3),
        (None, 42),
        (-1000, None),
        (0, 0),
        (99, 1000),
    ],
)
def test_integer_range_is_exact(lo: int | None, hi: int | None) -> None:
    pattern = _as_regex(integer_range(lo, hi))
    rng = random.Random(0)
    for n in [*range(-2100, 2100), *(rng.randint(-(10**12), 10**12) for _ in range(500))]:
        inside = (lo is None or n >= lo) and (hi is None or n <= hi)
        assert bool(pattern.match(str(n))) == inside, n
    assert not pattern.match("-0") and not pattern.match("01")


def test_empty_range_is_refused() -> None:
    with pytest.raises(ValueError):
        integer_range(5, 4)


def test_schema_bounds_reach_the_grammar() -> None:
    gbnf = schema_to_gbnf(
        '{"type":"object","properties":{"age":{"type":"integer","minimum":0,"exclusiveMaximum":121}},'
        '"required":["age"]}'
    )
    rule = next(line for line in gbnf.splitlines() if line.startswith("age ::= "))
    pattern = _as_regex(rule.removeprefix("age ::= ").removesuffix(" space"))
    assert [n for n in range(-50, 300) if pattern.match(str(n))] == list(range(121))
