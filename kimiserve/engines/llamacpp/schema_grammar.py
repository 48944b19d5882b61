"""JSON Schema → GBNF, with the integer bounds llama-cpp-python's converter leaves out.

llama-cpp-python's `SchemaConverter` ignores `minimum`/`maximum` (and the exclusive forms) on
integers, so a schema-valid output was not guaranteed. Here an integer with bounds becomes an
exact grammar of the decimal numbers in range (no leading zeros, "-0" never produced).
"""

from __future__ import annotations

import json
import math
from typing import Any

from llama_cpp.llama_grammar import SchemaConverter

MAX_DIGITS = 16  # the converter's own integral-part limit


def _digits(lo: str, hi: str) -> str:
    """Numbers of equal length from lo to hi (digit strings, lo ≤ hi), as a GBNF expression."""
    if len(lo) == 1:
        return f"[{lo}-{hi}]" if lo != hi else f'"{lo}"'
    if lo[0] == hi[0]:
        return f'"{lo[0]}" ({_digits(lo[1:], hi[1:])})'
    rest = len(lo) - 1
    if lo[1:] == "0" * rest and hi[1:] == "9" * rest:
        return f"[{lo[0]}-{hi[0]}] [0-9]{{{rest}}}"
    parts = [f'"{lo[0]}" ({_digits(lo[1:], "9" * rest)})']
    low, high = int(lo[0]) + 1, int(hi[0]) - 1
    if low <= high:
        parts.append(f"[{low}-{high}] [0-9]{{{rest}}}")
    parts.append(f'"{hi[0]}" ({_digits("0" * rest, hi[1:])})')
    return " | ".join(parts)


def _non_negative(lo: int, hi: int | None) -> str:
    """Integers lo..hi (hi None: unbounded up to MAX_DIGITS digits), 0 ≤ lo."""
    parts = []
    top = hi if hi is not None else 10**MAX_DIGITS - 1
    for length in range(len(str(lo)), len(str(top)) + 1):
        start = max(lo, 10 ** (length - 1) if length > 1 else 0)
        end = min(top, 10**length - 1)
        if start <= end:
            parts.append(f"({_digits(str(start), str(end))})")
    return " | ".join(parts)


def integer_range(lo: int | None, hi: int | None) -> str:
    """A GBNF expression for the JSON integers n with lo ≤ n ≤ hi (either bound may be open)."""
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"the integer range [{lo}, {hi}] is empty")
    parts = []
    if lo is None or lo < 0:  # the negative side: -1 down to lo
        neg_hi = -1 if hi is None or hi >= 0 else hi
        far = None if lo is None else -lo
        parts.append(f'"-" ({_non_negative(-neg_hi, far)})')
    if hi is None or hi >= 0:
        parts.append(_non_negative(max(lo or 0, 0), hi))
    return " | ".join(p for p in parts if p)


class BoundedSchemaConverter(SchemaConverter):
    def visit(self, schema: dict[str, Any], name: str) -> str:
        bounds = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
        if isinstance(schema, dict) and schema.get("type") == "integer" and any(b in schema for b in bounds):
            lo = _bound(schema, "minimum", "exclusiveMinimum", math.ceil, 1)
            hi = _bound(schema, "maximum", "exclusiveMaximum", math.floor, -1)
            rule = f"({integer_range(lo, hi)}) space"
            return str(self._add_rule("root" if name == "" else name, rule))  # type: ignore[no-untyped-call]
        return str(super().visit(schema, name))  # type: ignore[no-untyped-call]


def _bound(schema: dict[str, Any], inclusive: str, exclusive: str, rounding: Any, step: int) -> int | None:
    values = []
    if isinstance(schema.get(inclusive), int | float):
        values.append(int(rounding(schema[inclusive])))
    if isinstance(schema.get(exclusive), int | float):
        edge = schema[exclusive]
        values.append(int(edge) + step if float(edge).is_integer() else int(rounding(edge)))
    if not values:
        return None
    return max(values) if step > 0 else min(values)


def schema_to_gbnf(schema_text: str) -> str:
    schema = json.loads(schema_text)
    converter = BoundedSchemaConverter(  # type: ignore[no-untyped-call]
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )
    schema = converter.resolve_refs(schema, "stdin")
    converter.visit(schema, "")
    return str(converter.format_grammar())  # type: ignore[no-untyped-call]
