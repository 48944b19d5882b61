"""Repairs of what real Kimi K2.6 deployments get wrong, each bounded and counted.

The engine (engine.py) applies them; each repair it makes is counted by kind (`UpstreamEngine.
repairs`, scraped as `kimiserve_repairs_total{kind, engine}`). The kinds:

- `empty_answer`: the turn ends (`stop`) with no content and no tool call, on a tool follow-up
  turn or without any reasoning: `<|im_end|>` right after `</think>` (MoonshotAI/Kimi-K2 issue
  128: 13 of 15 tries on vLLM 0.21.0 and SGLang 0.5.11, none on Moonshot's API);
- `reasoning_only`: the same after reasoning on a user turn (MoonshotAI/kimi-code issue 520).
  Both are asked again once: on vLLM and SGLang by continuing after the reasoning so far, closed
  (the continuation budget forcing sends, `budget.continuation_body`), elsewhere with the same
  body (its reasoning then not shown: the client saw the first). Charged as one request, as budget
  forcing charges its continuation: one prompt, both requests' output. A second empty turn is an
  `EngineError` (`emptyAnswer`), never an empty answer.
- `tool_markers`: Kimi's raw tool-call section (`<|tool_calls_section_begin|>…`) in `content` or
  the reasoning, left unparsed by the engine's tool parser (vllm issues 34955, 32216): held back
  from its first marker on (`MarkerFilter`), so none of it reaches the client, and parsed into
  calls.
- `tool_call_id`: a call id not of the form `functions.{name}:{idx}`, such as `call_2` (sglang
  issue 25218) or `functionsexec5` (sglang PR 21377): renamed `functions.{name}:{idx}`, the index
  the conversation's count of calls (wire.py maps the client's ids in history the same way).
- `split_tool_calls`: several calls merged into one, their arguments one JSON object after another
  (vllm issue 24478: parallel calls' deltas under one `index`): split, each then validated against
  its tool's schema on its own (tools.py), as every call is.
- `extra_tool_calls`: calls past the first where one was asked for (`parallel_tool_calls: false`,
  a named `tool_choice`) from an upstream that made several anyway: dropped, counted per call
  (engine.py `_one_unless_parallel`; vLLM itself keeps only the first).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from kimiserve.domain.types import ToolCall, ToolSpec, Usage
from kimiserve.engines.openai_compat import tools

SECTION_BEGIN = "<|tool_calls_section_begin|>"
SECTION_END = "<|tool_calls_section_end|>"
CALL_BEGIN = "<|tool_call_begin|>"
ARGUMENT_BEGIN = "<|tool_call_argument_begin|>"
CALL_END = "<|tool_call_end|>"
_OPENERS = (SECTION_BEGIN, CALL_BEGIN)

_KIMI_ID = re.compile(r"functions\.(?P<name>.+):(?P<index>\d+)")
_RAW_CALL = re.compile(
    re.escape(CALL_BEGIN)
    + r"\s*(?P<id>.*?)\s*"
    + re.escape(ARGUMENT_BEGIN)
    + r"(?P<arguments>.*?)(?:"
    + re.escape(CALL_END)
    + r"|\Z)",
    re.S,
)


@dataclass(frozen=True)
class RawCall:
    """A call written as Kimi's raw markers: the id the model wrote, the arguments' text."""

    id: str
    arguments: str


class MarkerFilter:
    """One text stream (content or reasoning) with its raw tool-call sections taken out.

    `feed` returns the text that can be shown now: everything up to a marker, less a tail that
    may be the start of one (held until the next piece tells). A section runs from
    `<|tool_calls_section_begin|>` to `<|tool_calls_section_end|>`, or, opened by a bare
    `<|tool_call_begin|>`, to its `<|tool_call_end|>`; an unterminated one runs to the end.
    """

    def __init__(self) -> None:
        self.sections: list[str] = []
        self._held = ""
        self._inside = False

    def feed(self, text: str) -> str:
        buf = self._held + text
        shown: list[str] = []
        while buf:
            if not self._inside:
                starts = [i for i in (buf.find(m) for m in _OPENERS) if i >= 0]
                if not starts:
                    keep = _partial_tail(buf)
                    shown.append(buf[: len(buf) - keep])
                    buf = buf[len(buf) - keep :]
                    break
                start = min(starts)
                shown.append(buf[:start])
                buf = buf[start:]
                self._inside = True
            closer = SECTION_END if buf.startswith(SECTION_BEGIN) else CALL_END
            end = buf.find(closer)
            if end < 0:
                break
            end += len(closer)
            self.sections.append(buf[:end])
            buf = buf[end:]
            self._inside = False
        self._held = buf
        return "".join(shown)

    def close(self) -> str:
        """The end of the stream: a held tail that never became a marker is text after all."""
        held, self._held = self._held, ""
        if self._inside:
            self.sections.append(held)
            self._inside = False
            return ""
        return held

    def calls(self) -> list[RawCall]:
        out = []
        for section in self.sections:
            for m in _RAW_CALL.finditer(section):
                arguments = m["arguments"].split(SECTION_END)[0].strip()
                out.append(RawCall(m["id"].strip(), arguments))
        return out


def _partial_tail(text: str) -> int:
    """How many characters at the end of `text` could begin a marker."""
    for size in range(min(len(text), max(len(m) for m in _OPENERS) - 1), 0, -1):
        tail = text[-size:]
        if any(m.startswith(tail) for m in _OPENERS):
            return size
    return 0


def is_kimi_id(call_id: str, name: str) -> bool:
    m = _KIMI_ID.fullmatch(call_id)
    return m is not None and m["name"] == name


def name_of(raw: RawCall, declared: tuple[ToolSpec, ...]) -> str:
    """The tool a raw call names: from `functions.{name}:{idx}`, from a malformed id that still
    holds a declared name (`functionsexec5`), else the one declared tool, else the one tool whose
    schema its arguments fit; otherwise the id's text (then an undeclared tool, re-asked)."""
    m = _KIMI_ID.fullmatch(raw.id)
    if m is not None:
        return m["name"]
    bare = re.sub(r":?\d+$", "", re.sub(r"^functions\.?", "", raw.id))
    names = [t.name for t in declared]
    if bare in names:
        return bare
    if len(declared) == 1:
        return declared[0].name
    fitting = [n for n in names if tools.problem(ToolCall("", n, raw.arguments), declared) is None]
    return fitting[0] if len(fitting) == 1 else bare or raw.id


def split_merged(call: ToolCall) -> list[ToolCall]:
    """A call whose arguments are several JSON objects one after another, as that many calls of
    its tool (the first keeps its id); any other call as it is."""
    text = call.arguments.strip()
    try:
        json.loads(text)
        return [call]
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    parts: list[str] = []
    at = 0
    while at < len(text):
        try:
            value, end = decoder.raw_decode(text, at)
        except ValueError:
            return [call]
        if not isinstance(value, dict):
            return [call]
        parts.append(text[at:end])
        at = end
        while at < len(text) and text[at] in " \t\r\n,":
            at += 1
    if len(parts) < 2:
        return [call]
    return [ToolCall(call.id if i == 0 else "", call.name, part) for i, part in enumerate(parts)]


def combined(first: Usage, again: Usage) -> Usage:
    """One answer from two requests, charged as budget forcing charges its continuation: the
    first request's prompt, both requests' output."""
    return Usage(
        first.prompt_tokens,
        first.completion_tokens + again.completion_tokens,
        first.cached_tokens,
        first.reasoning_tokens + again.reasoning_tokens,
    )
