"""One assistant turn as it is generated: reasoning, then text or a tool call (scheduler thread only).

A `Turn` reads every token the sequence writes and turns it into events, and it decides which
tokens the engine writes itself instead of sampling (`forced`):

- THINK (thinking level != none; the prompt ends with `<think>\\n`): text is reasoning
  (`ReasoningDelta`) until the model writes `</think>`, or until the budget is nearly spent: then
  the engine writes `\\n</think>\\n\\n` itself, so reasoning (closing included) never exceeds
  `THINKING_BUDGETS[level]`. An end-of-generation token in the section is replaced by the same
  closing, and end-of-generation is banned until the answer has some text (the answer still
  comes). `reasoning_tokens` counts the section's tokens.
- ANSWER: text (`TextDelta`, user stop strings apply). With tools under `auto`, `<tool_call>` is
  watched like a stop string: when the model writes it, the call grammar starts there (a lazy
  grammar, as llama.cpp's trigger words). Under `required`/named the engine writes `<tool_call>`
  itself and the grammar applies at once. A request constraint (JSON schema/grammar) applies
  from the first answer token.
- CALL: the call's JSON body under the tools' grammar (`toolcalls.py`); when it is complete the
  sequence ends with a `ToolCallEvent` and `Finished("tool_calls")`. A body cut by `max_tokens`
  is not closed: it is reported as the partial call, arguments as cut (maybe not JSON), with
  `Finished("length")`, as OpenAI does; so is a forced call cut inside its marker or name when
  only one tool can be meant (`toolcalls.partial_call`).
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable

from kimiserve.domain.types import (
    FinishReason,
    ReasoningDelta,
    TextDelta,
    ToolCallEvent,
    ToolSpec,
)
from kimiserve.engines.llamacpp.job import Item
from kimiserve.engines.llamacpp.sampling import SamplerChain
from kimiserve.engines.llamacpp.stops import TextStream
from kimiserve.engines.llamacpp.toolcalls import CALL_OPEN, THINK_END, parse_call, partial_call

THINK, CLOSING, ANSWER, CALL = range(4)


class Turn:
    def __init__(
        self,
        *,
        sampler: SamplerChain,
        piece: Callable[[int], bytes],
        tokenize: Callable[[str], list[int]],
        stops: tuple[str, ...] = (),
        budget: int = 0,
        think_close: tuple[int, ...] = (),
        tools: tuple[ToolSpec, ...] = (),
        forced_call: tuple[int, ...] | None = None,
        lazy_call: bool = False,
    ) -> None:
        self._sampler = sampler
        self._piece = piece
        self._tokenize = tokenize
        self._budget = budget
        self._think_close = think_close
        self._tools = tools
        self._forced_call = forced_call  # the marker's tokens, written by the engine
        self._lazy_call = lazy_call
        self._think = TextStream((THINK_END,))
        self._text = TextStream(stops + ((CALL_OPEN,) if lazy_call else ()))
        self._closing = False
        self._lead = budget > 0  # strip the whitespace that follows `</think>`
        self._marker_left = 0
        self._call = bytearray()
        self.forced: deque[int] = deque()
        self.reasoning_tokens = 0
        self.stopped = False  # a user stop string ended the answer
        self.call_done = False  # a complete call body was written
        self.phase = THINK if budget > 0 else ANSWER
        if self.phase == ANSWER:
            self._start_answer()

    def _start_answer(self) -> None:
        self.phase = ANSWER
        if self._forced_call is not None:
            self.forced.extend(self._forced_call)
            self._marker_left = len(self._forced_call)
        elif not self._lazy_call:
            self._sampler.activate([])  # the request's constraint, if any, from here on

    @property
    def answer_pending(self) -> bool:
        """After a reasoning section, no answer text yet: the engine bans end-of-generation."""
        return self.phase == ANSWER and self._lead and self._marker_left == 0

    def on_eog(self) -> bool:
        """An end-of-generation token was sampled: True if it is replaced by `forced[0]`."""
        if self.phase == THINK and not self._closing:
            self._closing = True
            self.forced.extend(self._think_close)
            return bool(self.forced)
        return False

    def feed(self, token: int) -> list[Item]:
        piece = self._piece(token)
        if self.phase == THINK:
            self.reasoning_tokens += 1
            text = self._think.feed(piece)
            items: list[Item] = [ReasoningDelta(text)] if text else []
            if self._think.stopped:
                self.phase = CLOSING
            elif not self._closing and self.reasoning_tokens + len(self._think_close) >= self._budget:
                self._closing = True
                self.forced.extend(self._think_close)
            if self.phase == CLOSING and not self.forced:
                self._start_answer()
            return items
        if self.phase == CLOSING:  # the rest of the closing the engine writes
            if not self.forced:
                self._start_answer()
            return []
        if self.phase == CALL:
            self._call += piece
            tail = self._sampler.tail  # a call's JSON is never closed by the engine (`jsonclose.py`)
            self.call_done = tail is not None and tail.done
            return []
        if self._marker_left > 0:
            self._marker_left -= 1
            if self._marker_left == 0:
                self.phase = CALL
                self._sampler.activate([])
            return []
        return self._answer(self._text.feed(piece))

    def _answer(self, text: str) -> list[Item]:
        if self._text.stopped:
            if self._lazy_call and self._text.stopped_by == CALL_OPEN:
                self.phase = CALL
                prefix = self._tokenize(self._text.rest) if self._text.rest else []
                accepted = self._sampler.activate(prefix)
                self._call += b"".join(self._piece(t) for t in prefix[:accepted])
            else:
                self.stopped = True
        if self._lead:
            text = text.lstrip()
            self._lead = not text
        return [TextDelta(text)] if text else []

    def finish(self, reason: FinishReason) -> tuple[list[Item], FinishReason]:
        """The items that end the turn, and its finish reason."""
        if self.phase == THINK:
            text = self._think.flush()
            return ([ReasoningDelta(text)] if text else []), reason
        if self.phase == ANSWER and self._marker_left > 0 and reason == "length":
            cut = partial_call("", self._tools, _call_id())  # a forced call cut inside its marker
            return ([ToolCallEvent(cut)] if cut is not None else []), reason
        if self.phase == ANSWER:
            return self._answer(self._text.flush()), reason
        if self.phase == CALL:
            body = self._call.decode("utf-8", errors="replace")
            call = parse_call(body, self._tools, _call_id()) if self.call_done else None
            if call is not None:
                return [ToolCallEvent(call)], "tool_calls"
            if reason == "length":
                cut = partial_call(body, self._tools, _call_id())
                if cut is not None:
                    return [ToolCallEvent(cut)], reason
        return [], reason


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"
