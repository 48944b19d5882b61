"""The input boundary: request bytes (an HTTP body, a WebSocket frame) → JSON value, or a 4xx.

Everything a protocol handler sees has passed here, so nothing past it has to fear the bytes:

- size: a body over the cap is refused while it streams in (Content-Length is not trusted),
  with 413 `payloadTooLarge`;
- encoding: the bytes must be strict UTF-8 (overlong forms, encoded surrogates and stray
  continuation bytes are refused): 400 `invalidJSON`, parameter `body`;
- depth: arrays and objects nested deeper than `MAX_DEPTH` are refused before the parser
  recurses into them (so no RecursionError, whatever the input): 400 `invalidJSON`;
- text: a string (or object key) holding a lone UTF-16 surrogate (`"\\ud800"`, which no UTF-8
  text can carry, so the tokenizer, the database and the response encoder would all fail on
  it) or U+0000 (which PostgreSQL text and C strings cannot carry) is refused with
  `InvalidText`, naming where it is, e.g. `messages[0].content` (its `path` lets a protocol
  spell the location its own way).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
from starlette.requests import Request

from kimiserve.errors import InvalidRequest

MAX_DEPTH = 64  # the deepest legitimate bodies (JSON schemas in responseFormat, tools) stay well under

Path = tuple[int | str, ...]

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_RISKY_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


class PayloadTooLarge(InvalidRequest):
    code = "payloadTooLarge"
    status = 413


class InvalidText(InvalidRequest):
    """A string the server cannot carry: a lone surrogate or NUL, at `path` in the body."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self.document: Any = None  # the parsed body it was found in (set by parse_json)
        where = path_text(path) or "body"
        super().__init__(f"{where} contains {what}, which is not allowed in text.", parameter=where)


def path_text(path: Path) -> str:
    """`("messages", 0, "content")` → `messages[0].content` (the OpenAI spelling)."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    size = 0
    chunks: list[bytes] = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, max_bytes: int) -> Any:
    return parse_json(await read_body(request, max_bytes))


def parse_json(data: bytes | str) -> Any:
    """Parse one JSON document at the boundary's rules (see the module docstring)."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(
                f"The request body is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}).",
                code="invalidJSON",
                parameter="body",
            ) from None
    else:
        text = data
    check_depth(text)
    try:
        value = json.loads(text)
    except RecursionError:  # unreachable after check_depth; kept so no input can raise it
        raise _too_deep() from None
    except ValueError as exc:
        raise InvalidRequest(
            f"The request body is not valid JSON: {exc}", code="invalidJSON", parameter="body"
        ) from None
    if _RISKY_ESCAPE.search(text) is not None:  # only escapes can put these in a parsed string
        try:
            check_text(value)
        except InvalidText as exc:
            exc.document = value
            raise
    return value


def check_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH, counting brackets outside strings."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    brackets = np.frombuffer(_NOT_BRACKET.sub("", _STRING.sub("", text)).encode("ascii"), dtype=np.uint8)
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1)
    if len(steps) and int(np.cumsum(steps).max()) > MAX_DEPTH:
        raise _too_deep()


def check_text(value: Any) -> None:
    """Raise InvalidText for the first string or key holding a lone surrogate or NUL."""
    stack: list[tuple[Path, Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            _check_string(path, item)
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                _check_string((*path, key), key)
                stack.append(((*path, key), child))
        elif isinstance(item, list):
            stack.extend(((*path, i), child) for i, child in reversed(list(enumerate(item))))


def _check_string(path: Path, text: str) -> None:
    found = _BAD_TEXT.search(text)
    if found is None:
        return
    char = found.group()
    what = "U+0000 (NUL)" if char == "\x00" else f"a lone UTF-16 surrogate (\\u{ord(char):04x})"
    shown = tuple(part if isinstance(part, int) else _BAD_TEXT.sub("\ufffd", part) for part in path)
    raise InvalidText(shown, what)


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body exceeds {max_bytes} bytes.", parameter="body")


def _too_deep() -> InvalidRequest:
    return InvalidRequest(
        f"The request body nests arrays and objects deeper than {MAX_DEPTH} levels.",
        code="invalidJSON",
        parameter="body",
    )
