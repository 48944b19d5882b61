"""JSON output that cannot fail to encode, whatever text a client or a model put in it.

Every JSON body, SSE frame and WebSocket frame goes through `dumps`/`encode`. A Python string
can hold what UTF-8 cannot (a lone UTF-16 surrogate such as "\\ud800", from a stored task or an
escape that slipped past the input boundary); such code points come out as U+FFFD (a surrogate
pair split across code points is joined), so the output is always valid UTF-8 JSON. Values JSON
has no form for (NaN, infinities, objects) become null or their `str()`; nesting deeper than
`MAX_OUTPUT_DEPTH` is cut to null rather than raising RecursionError.

The fast path is orjson, which refuses (rather than writes) everything above except NaN and the
infinities, which it writes as null too: what it refuses takes the stdlib's path below. Types
orjson would write and the stdlib would not (dataclasses, datetimes, subclasses) are passed
through to that path as well, so the output does not depend on which path ran.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson
from starlette.responses import JSONResponse

_ORJSON = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS

MAX_OUTPUT_DEPTH = 200
_SURROGATE = re.compile("[\ud800-\udfff]")


def _valid_unicode(text: str) -> str:
    """`text` with every surrogate code point that UTF-8 cannot carry as U+FFFD (pairs joined)."""
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _plain(value: Any, depth: int = 0) -> Any:
    """A copy of `value` made only of what json.dumps writes without fail (the slow path)."""
    if depth > MAX_OUTPUT_DEPTH:
        return None
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _valid_unicode(value)
    if isinstance(value, dict):
        return {_valid_unicode(str(k)): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value]
    return _valid_unicode(str(value))


def _stdlib_dumps(value: Any) -> str:
    """The path for what orjson refuses."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return json.dumps(_plain(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return _valid_unicode(text)


def dumps(value: Any) -> str:
    """Compact JSON text for `value`; never raises, and the text always encodes as UTF-8."""
    try:
        return orjson.dumps(value, option=_ORJSON).decode("utf-8")
    except (TypeError, orjson.JSONEncodeError):
        return _stdlib_dumps(value)


def encode(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=_ORJSON)
    except (TypeError, orjson.JSONEncodeError):
        return _stdlib_dumps(value).encode("utf-8")


class SafeJSONResponse(JSONResponse):
    """starlette's JSONResponse, rendered with `encode`: user text can never turn it into a 500."""

    def render(self, content: Any) -> bytes:
        return encode(content)
