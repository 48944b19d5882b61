"""Keeping a small model's JSON from running on until `max_tokens`: two bounds on what it may pick.

A JSON grammar allows loops that never end, and a small model falls into them: digits
(`1111…`, `4649356748924649…`), one array item again and again (`"finance","finance",…`), a
string's pattern (`678901234567890123…`). Through the server, on JSONSchemaBench's GlaiveAI
function schemas (bench/tools.py), every failure was such a loop cut by `max_tokens`. `JsonGuard`
narrows the tokens the grammar allows (it never admits one the grammar refuses, and when the
narrowing would leave none it leaves the grammar's set as it is):

- **A number has at most 17 digits** (`MAX_DIGITS`, the significant digits a double holds):
  from the 17th digit on, a token that would go on with the number (a digit, `.`, an
  exponent) is dropped, so the number ends.
- **A loop winds its container up.** When the last `max(3p, 24)` bytes of the JSON repeat with
  a period of `p` bytes (1 ≤ p ≤ 128; one byte in eight may differ, for counters such as
  `_31_`, `_32_`; looked for every `CHECK_EVERY` bytes), the innermost object or array is
  closed as soon as the grammar allows, and so is any container opened inside it meanwhile:
  a string value ends (a token made only of `"`, `]`, `}` first, then one starting with `"`), a
  number ends, and after a value a token made of `]`/`}` is preferred. Where the grammar allows
  none of those (a required key still to come, a `minItems` not reached) the model picks as
  usual. The wind-up ends when that container closes; the next loop is looked for in what is
  written after that.

Both apply to the embedded engine only (upstream engines get the schema as the client sent it),
to `response_format` JSON schemas and tool-call arguments alike. Identical repeats a client
wants (`[0,0,0,…]` past a dozen items, three identical objects in a row) are wound up too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from kimiserve.engines.llamacpp.jsonclose import AFTER, NUMBER, STRING, JsonTail

MAX_DIGITS = 17
MAX_PERIOD = 128
MIN_LOOP = 24  # bytes: the shortest run taken as a loop
MISMATCH = 8  # one compared byte in this many may differ
CHECK_EVERY = 8  # bytes written between two looks for a loop (a look costs ~100 µs)

Bits = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class TokenClasses:
    """Per token of the vocabulary: what its text starts with or is made of."""

    string_end: Bits  # only `"`, `]`, `}`, starting with `"`
    quote_first: Bits  # starts with `"`
    container_end: Bits  # only `]` and `}`
    number_going_on: Bits  # starts with a digit, `.`, `e`, `E`, `+` or `-`

    @classmethod
    def of(cls, pieces: Sequence[bytes]) -> TokenClasses:
        def where(test: Callable[[bytes], bool]) -> Bits:
            return np.array([bool(p) and test(p) for p in pieces], dtype=np.bool_)

        return cls(
            string_end=where(lambda p: p[0] == ord('"') and set(p) <= set(b'"]}')),
            quote_first=where(lambda p: p[0] == ord('"')),
            container_end=where(lambda p: set(p) <= set(b"]}")),
            number_going_on=where(lambda p: p[0] in b"0123456789.eE+-"),
        )


def looping(data: bytes | bytearray) -> bool:
    """Whether `data` ends in a run that repeats with a period of at most MAX_PERIOD bytes."""
    if len(data) < MIN_LOOP:
        return False
    tail = np.frombuffer(bytes(data[-3 * MAX_PERIOD :]), dtype=np.uint8)  # the longest window
    for period in range(1, MAX_PERIOD + 1):
        size = max(3 * period, MIN_LOOP)
        if size > len(tail):
            return False
        window = tail[-size:]
        differing = int(np.count_nonzero(window[period:] != window[:-period]))
        if differing * MISMATCH <= size - period:
            return True
    return False


class JsonGuard:
    """One sequence's bounds (see the module doc); `narrow()` before each constrained token."""

    def __init__(self, classes: TokenClasses) -> None:
        self._classes = classes
        self._winding: int | None = None  # the depth of the container being wound up
        self._since = 0  # where the JSON may next be looked at for a loop (after the last one)
        self._checked = 0  # the JSON's length when it was last looked at
        self.loops = 0  # loops wound up so far

    def narrow(self, tail: JsonTail, data: bytes | bytearray, allowed: Bits) -> Bits:
        """`allowed` (the grammar's tokens), narrowed where a bound applies."""
        if tail.broken:
            return allowed
        depth = len(tail.stack)
        if self._winding is not None and (depth < self._winding or tail.done):
            self._winding = None
            self._since = len(data)  # the loop wound up is still in the bytes just before
        if self._winding is None and len(data) >= self._checked + CHECK_EVERY:
            self._checked = len(data)
            if looping(data[self._since :]):
                self._winding = depth  # 0: the JSON is one string or number, which then ends
                self.loops += 1
        classes = self._classes
        tiers: list[Bits] = []
        number_open = tail.mode == NUMBER and tail.number_ok
        if self._winding is not None:
            if tail.mode == STRING and not tail.key:
                tiers += [classes.string_end, classes.quote_first]
            elif number_open or tail.mode == AFTER:
                tiers.append(classes.container_end)
        if number_open and (self._winding is not None or tail.digits >= MAX_DIGITS):
            tiers.append(~classes.number_going_on)
        for tier in tiers:
            narrowed = allowed & tier
            if narrowed.any():
                return narrowed
        return allowed
