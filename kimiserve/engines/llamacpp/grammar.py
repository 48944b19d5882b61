"""Constraints compiled by llguidance: budgeted compilation, a bounded cache, per-sequence matchers.

llguidance (the grammar engine llama.cpp and vLLM use for JSON schema) compiles a JSON schema or
a GBNF/Lark grammar into a matcher that computes the set of allowed tokens (a bitmask over the
vocabulary) in microseconds to milliseconds, lazily: a `maxLength` of 32767 is a bounded lexer
state, not 32767 nested grammar rules (what made llama.cpp's own grammar sampler overflow its
stack and kill the process).

- Compilation runs on a small thread pool (llguidance drops the GIL), never on the decode
  thread, and is bounded twice: llguidance's own `LLParserLimits` (grammar size, lexer fuel)
  and a wall-clock budget. Over either: `GrammarError` (400) naming the parameter, never a hang.
- Outcomes (a compiled matcher or the error) are cached by constraint text in a bounded LRU, so
  `check()` and the following `generate()` compile once, and a schema that timed out is refused
  at once the next time.
- `Grammar.matcher()` hands each sequence its own copy of the compiled matcher.
- An integer without bounds is held to 16 digits (as llama.cpp's own converter does): a small
  model otherwise writes digits until `max_tokens` runs out. Bounds the schema states are kept.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import llguidance
from llguidance.gbnf_to_lark import any_to_lark

from kimiserve.domain.types import Constraint
from kimiserve.engines.llamacpp.schemas import closed, enforceable, refusal
from kimiserve.errors import GrammarError

# JSON as the model should write it: compact separators, no free whitespace (small models
# otherwise fill maxTokens with newlines). Not `lenient`: a keyword llguidance does not implement
# is refused, never ignored (`schemas.py` rewrites what it can first, and drops the `format`
# names outside the JSON Schema vocabulary, which are annotations);
# `coerce_one_of`: `oneOf` is enforced as `anyOf` (an output may match two branches).
JSON_OPTIONS: llguidance._lib.JsonCompileOptions = {
    "whitespace_flexible": False,
    "lenient": False,
    "coerce_one_of": True,
}
INTEGER_LIMIT = 10**16 - 1
# 2023-01-01T00:00:00.123456789+00:00; the others: what a small model otherwise writes on and on
FORMAT_LENGTHS = {"date-time": 35, "time": 24, "email": 64, "hostname": 64, "uri": 120, "uri-reference": 120}
NOT_SCHEMAS = frozenset({"const", "enum", "default", "examples", "example"})  # values, not schemas
PARAMETER = "constraint"  # the protocols map it to response_format / settings.jsonSchema


@dataclass(frozen=True)
class Grammar:
    """A compiled constraint: `json` says the output is JSON text (so it can be closed early)."""

    template: llguidance.LLMatcher
    json: bool

    def matcher(self) -> llguidance.LLMatcher:
        return self.template.deep_copy()


class GrammarCache:
    """Compile constraints within a budget; keep the last `size` outcomes by constraint text."""

    def __init__(
        self,
        tokenizer: llguidance.LLTokenizer,
        *,
        budget_s: float = 2.0,
        size: int = 256,
        limits: llguidance.LLParserLimits | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self._budget_s = budget_s
        self._size = size
        self._limits = limits if limits is not None else llguidance.LLParserLimits(verbose_errors=False)
        self._outcomes: OrderedDict[tuple[str, str], Grammar | GrammarError] = OrderedDict()
        self._compiling: dict[tuple[str, str], Future[Grammar]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="grammar-compile")

    def get(self, constraint: Constraint | None, parameter: str = PARAMETER) -> Grammar | None:
        """The compiled grammar of a constraint (None without one); GrammarError if it fails."""
        if constraint is None:
            return None
        if constraint.json_schema is not None:
            key = ("json", constraint.json_schema)
        elif constraint.grammar is not None:
            key = ("gbnf", constraint.grammar)
        else:
            return None
        return self._get(key, parameter)

    def get_calls(self, source: str, parameter: str) -> Grammar:
        """The compiled Lark grammar of a tool call's JSON body (`toolcalls.call_grammar`)."""
        return self._get(("calls", source), parameter)

    def _get(self, key: tuple[str, str], parameter: str) -> Grammar:
        future: Future[Grammar] | None = None
        with self._lock:
            outcome = self._outcomes.get(key)
            if outcome is not None:
                self._outcomes.move_to_end(key)
            else:
                future = self._compiling.get(key)
                if future is None:
                    future = self._pool.submit(self._compile, *key)
                    self._compiling[key] = future
        if future is not None:
            outcome = self._wait(key, future)
        assert outcome is not None
        if isinstance(outcome, GrammarError):
            raise GrammarError(outcome.message, parameter=parameter)
        return outcome

    def _wait(self, key: tuple[str, str], future: Future[Grammar]) -> Grammar | GrammarError:
        outcome: Grammar | GrammarError
        try:
            outcome = future.result(timeout=self._budget_s)
        except FutureTimeout:
            outcome = GrammarError(
                f"The constraint did not compile within {self._budget_s:g} s; simplify the schema.",
                parameter=PARAMETER,
            )
        except GrammarError as exc:
            outcome = exc
        with self._lock:
            self._compiling.pop(key, None)
            self._outcomes[key] = outcome
            self._outcomes.move_to_end(key)
            while len(self._outcomes) > self._size:
                self._outcomes.popitem(last=False)
        return outcome

    def _compile(self, kind: str, text: str) -> Grammar:
        if kind == "json":
            try:
                schema = json.loads(text)
            except ValueError as exc:
                raise GrammarError(f"The JSON schema is not valid JSON: {exc}", parameter=PARAMETER) from exc
            except RecursionError as exc:
                raise GrammarError("The JSON schema nests too deeply.", parameter=PARAMETER) from exc
            try:
                schema = prepare(schema)
                source = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
            except (ValueError, TypeError) as exc:
                raise GrammarError(f"The JSON schema is not usable: {exc}", parameter=PARAMETER) from exc
            except RecursionError as exc:
                raise GrammarError("The JSON schema nests too deeply.", parameter=PARAMETER) from exc
        elif kind == "calls":
            try:
                source = llguidance.LLMatcher.grammar_from_lark(text)
            except Exception as exc:
                raise GrammarError(f"The tool schemas are not usable: {exc}", parameter=PARAMETER) from exc
        else:
            if not text.strip():
                raise GrammarError("The grammar is empty.", parameter=PARAMETER)
            try:
                source = llguidance.LLMatcher.grammar_from_lark(any_to_lark(text))
            except Exception as exc:  # the GBNF converter raises its own and ValueError/KeyError
                raise GrammarError(f"The grammar does not parse: {exc}", parameter=PARAMETER) from exc
        matcher = llguidance.LLMatcher(self._tokenizer, source, log_level=0, limits=self._limits)
        if matcher.is_error():
            error = matcher.get_error()
            raise GrammarError(
                refusal(error) or f"The constraint does not compile: {_short(error)}", parameter=PARAMETER
            )
        return Grammar(matcher, json=kind in ("json", "calls"))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def prepare(schema: Any) -> Any:
    """The schema as it is compiled: integers and times bounded, rewritten to what llguidance
    enforces (`schemas.enforceable`), declared objects closed (`schemas.closed`)."""
    return closed(enforceable(bound_integers(schema)))


def bound_integers(node: Any) -> Any:
    """A copy of a schema where every integer without bounds gets ±(10**16 - 1), and every
    string of a format in FORMAT_LENGTHS without a maxLength gets one (`date-time`/`time`: 35/24
    characters, nine fraction digits and an offset; `email` 64, `uri` 120, ...), which a small
    model otherwise writes until max_tokens."""
    if isinstance(node, list):
        return [bound_integers(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: value if key in NOT_SCHEMAS else bound_integers(value) for key, value in node.items()}
    kind = node.get("type")
    if kind == "integer" or (isinstance(kind, list) and "integer" in kind):
        if "minimum" not in node and "exclusiveMinimum" not in node:
            out["minimum"] = -INTEGER_LIMIT
        if "maximum" not in node and "exclusiveMaximum" not in node:
            out["maximum"] = INTEGER_LIMIT
    fmt = node.get("format")
    limit = FORMAT_LENGTHS.get(fmt) if isinstance(fmt, str) else None
    if limit is not None and "maxLength" not in node:
        out["maxLength"] = limit
    return out


def _short(message: str, limit: int = 300) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 1] + "…"
