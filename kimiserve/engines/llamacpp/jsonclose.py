"""Closing JSON cut by `max_tokens`: the shortest ending of a JSON prefix, and when it may be used.

`JsonTail` follows the bytes a JSON-constrained sequence emits (a small pushdown state: open
objects and arrays, inside a string or escape, a number, a literal, what comes next) and answers
`closing()`: the shortest ending that makes the text parse. The sampler (`sampling.py`) uses it
when `max_tokens` is about to run out: a sampled token is kept only if what it leaves to close
still fits in the tokens left; otherwise the next token of the closing is emitted instead. Every
closing character costs at most one token, and each forced token shortens the closing by at
least one character, so the output ends as complete JSON exactly within the budget.

The rule (what a client gets when JSON output meets `max_tokens`; `finish_reason` is `length`
either way):

- The output is closed only when the closed value validates against the request's JSON schema
  (`SchemaCheck`, with jsonschema; `response_format: json_object` is the schema
  `{"type": "object"}`) and the closing invents no key (`invents_key`): a cut inside a key, or
  right after a comma in an object, is never closed into `"":0` or a truncated key name.
- Otherwise the text is returned exactly as cut, which does not parse: what OpenAI and vLLM
  return. Sampling goes on under the grammar; each later token is checked the same way, so a
  later state that does close validly (a string value ends) is still closed in time.
- A tool call's arguments are never closed (`SchemaCheck` is not used for them): a call cut by
  `max_tokens` is reported with its arguments as cut, as OpenAI does (`turn.py`).

Values the closing may invent are the shortest JSON: `0` for a value (kept only when the schema
accepts it). A prefix this tracker cannot follow (not JSON) gives `closing() is None`: nothing
is forced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import jsonschema  # type: ignore[import-untyped]

VALUE, KEY, COLON, AFTER, STRING, NUMBER, LITERAL, DONE = range(8)
WHITESPACE = b" \t\r\n"
LITERALS = {ord("t"): b"rue", ord("f"): b"alse", ord("n"): b"ull"}
NUMBER_BYTES = frozenset(b"0123456789+-.eE")


@dataclass
class JsonTail:
    stack: list[int] = field(default_factory=list)  # b"{" or b"[" of each open container
    mode: int = VALUE
    fresh: bool = False  # the innermost container was just opened (may close at once)
    key: bool = False  # the string being read is an object key
    escape: int = 0  # 0 none, 1 after a backslash, 2..5: hex digits of \\u still to read + 1
    number_ok: bool = False  # the number so far is complete (ends with a digit)
    literal: bytes = b""  # what remains of true/false/null
    broken: bool = False
    digits: int = 0  # digits of the number being read (`jsonguard.py` bounds them)

    def copy(self) -> JsonTail:
        return JsonTail(
            list(self.stack),
            self.mode,
            self.fresh,
            self.key,
            self.escape,
            self.number_ok,
            self.literal,
            self.broken,
            self.digits,
        )

    def feed(self, data: bytes) -> None:
        for byte in data:
            if self.broken:
                return
            self._byte(byte)

    def closing(self) -> str | None:
        if self.broken:
            return None
        head = ""
        mode = self.mode
        if mode == STRING:
            if self.escape == 1:
                head += "n"
            elif self.escape > 1:
                head += "0" * (self.escape - 1)
            head += '"'
            mode = COLON if self.key else AFTER
        elif mode == NUMBER:
            head += "" if self.number_ok else "0"
            mode = AFTER
        elif mode == LITERAL:
            head += self.literal.decode()
            mode = AFTER
        if mode == KEY:
            head += "" if self.fresh else '"":0'
        elif mode == COLON:
            head += ":0"
        elif mode == VALUE:
            if not self.stack:
                head += "{}"
            elif not (self.fresh and self.stack[-1] == ord("[")):
                head += "0"
        elif mode == DONE:
            return head
        return head + "".join("}" if c == ord("{") else "]" for c in reversed(self.stack))

    @property
    def invents_key(self) -> bool:
        """The closing would name a key the model did not finish: inside a key, or after a comma."""
        if self.broken:
            return False
        return (self.mode == STRING and self.key) or (self.mode == KEY and not self.fresh)

    @property
    def done(self) -> bool:
        return self.mode == DONE and not self.broken

    def _byte(self, byte: int) -> None:
        mode = self.mode
        if mode == STRING:
            self._string(byte)
        elif mode == NUMBER:
            if byte in NUMBER_BYTES:
                self.number_ok = ord("0") <= byte <= ord("9")
                self.digits += self.number_ok
            else:
                self.mode = AFTER
                self._byte(byte)
        elif mode == LITERAL:
            if self.literal and byte == self.literal[0]:
                self.literal = self.literal[1:]
                if not self.literal:
                    self._value_done()
            else:
                self.broken = True
        elif byte in WHITESPACE:
            return
        elif mode == VALUE:
            self._value_start(byte)
        elif mode == KEY:
            if byte == ord('"'):
                self.mode, self.key, self.escape = STRING, True, 0
            elif byte == ord("}") and self.fresh:
                self._close()
            else:
                self.broken = True
        elif mode == COLON:
            if byte == ord(":"):
                self.mode, self.fresh = VALUE, False
            else:
                self.broken = True
        elif mode == AFTER:
            if byte == ord(",") and self.stack:
                self.mode = KEY if self.stack[-1] == ord("{") else VALUE
                self.fresh = False
            elif self.stack and byte == (ord("}") if self.stack[-1] == ord("{") else ord("]")):
                self._close()
            else:
                self.broken = True
        else:  # DONE: nothing may follow
            self.broken = True

    def _value_start(self, byte: int) -> None:
        if byte in (ord("{"), ord("[")):
            self.stack.append(byte)
            self.mode = KEY if byte == ord("{") else VALUE
            self.fresh = True
        elif byte == ord('"'):
            self.mode, self.key, self.escape = STRING, False, 0
        elif byte == ord("-") or ord("0") <= byte <= ord("9"):
            self.mode, self.number_ok = NUMBER, byte != ord("-")
            self.digits = int(self.number_ok)
        elif byte in LITERALS:
            self.mode, self.literal = LITERAL, LITERALS[byte]
        elif byte == ord("]") and self.fresh and self.stack and self.stack[-1] == ord("["):
            self._close()
        else:
            self.broken = True

    def _string(self, byte: int) -> None:
        if self.escape == 1:
            self.escape = 5 if byte == ord("u") else 0
        elif self.escape > 1:
            self.escape -= 1
            if self.escape == 1:
                self.escape = 0
        elif byte == ord("\\"):
            self.escape = 1
        elif byte == ord('"'):
            if self.key:
                self.mode = COLON
            else:
                self._value_done()

    def _value_done(self) -> None:
        self.fresh = False
        self.mode = AFTER if self.stack else DONE

    def _close(self) -> None:
        self.stack.pop()
        self._value_done()


class SchemaCheck:
    """Whether a closed JSON text may stand as the output: it parses and validates against the
    schema. A schema jsonschema cannot apply (an unresolvable `$ref`...) closes nothing."""

    def __init__(self, schema_text: str) -> None:
        self._validator: Any = None
        try:
            schema = json.loads(schema_text)
            self._validator = jsonschema.validators.validator_for(schema)(schema)
        except Exception:  # the grammar compiled it; one jsonschema cannot read only closes nothing
            self._validator = None

    def __call__(self, text: bytes) -> bool:
        if self._validator is None:
            return False
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return False
        try:
            return bool(self._validator.is_valid(value))
        except Exception:  # a `$ref` that does not resolve, a bad pattern: not known valid, not closed
            return False
