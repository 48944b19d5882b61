"""One assistant turn as it is generated: reasoning, then text or a tool call (scheduler thread only).

A `Turn` reads every token the sequence writes and turns it into events, and it decides which
tokens the engine writes itself instead of sampling (`forced`):

- THINK (thinking level != none; the prompt ends with `<think>\\n`): text is reasoning
  (`ReasoningDelta`) until the model writes `</think>`, or until the budget is nearly spent: then
  the engine writes `\\n</think>\\n\\n` itself, so reasoning (closing included) never exceeds
  the request's budget (`reasoning_budget`: an exact one, else `THINKING_BUDGETS[level]`). An
  end-of-generation token in the section is replaced by the same closing, and end-of-generation
  is banned until the answer has some text (the answer still comes). `reasoning_tokens` counts
  the section's tokens.
- ANSWER: text (`TextDelta`, user stop strings apply). With tools under `auto`, `<tool_call>` is
  watched like a stop string: when the model writes it, the call grammar starts there (a lazy
  grammar, as llama.cpp's trigger words). Under `required`/named the engine writes `<tool_call>`
  itself and the grammar applies at once. A request constraint (JSON schema/grammar) applies
  from the first answer token. With logprobs asked, each `TextDelta` carries the logprobs of the
  tokens its text came from: a token whose text is held back (a stop-string prefix, part of a
  character) goes with the delta that releases it; tokens whose text is dropped (whitespace
  after `</think>`, a stop string) are dropped with it, except that a token holding both text
  and the start of a stop string stays, whole, with its text.
- CALL: the call's JSON body under the tools' grammar (`toolcalls.py`); when it is complete its
  `ToolCallEvent` is emitted at once, with the id `functions.{name}:{idx}` (`idx` counts the
  conversation's calls, as Kimi numbers them: the history's first, then this turn's). A body cut
  by `max_tokens` is not closed: it is reported as the partial call, arguments as cut (maybe not
  JSON), and the turn ends with `length`, as OpenAI does; so is a forced call cut inside its
  marker or name when only one tool can be meant (`toolcalls.partial_call`).
- NEXT (after a complete call, while the turn may make more: `max_calls`): the engine writes
  `</tool_call>`, the grammar is restarted for a new call, and the model chooses between
  end-of-generation (the turn ends, `Finished("tool_calls")`) and `\n` (`choices`: only those
  tokens can be sampled), after which the engine writes `<tool_call>` and the next body follows
  under the grammar. With `max_calls` reached the turn ends after the body. A call identical to
  one the turn already made (same name and arguments) ends the turn and is not reported: the
  small model, asked for two calls, otherwise repeats them until `max_tokens`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import replace

from kimiserve.domain.types import (
    FinishReason,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCallEvent,
    ToolSpec,
)
from kimiserve.engines.llamacpp.job import Item
from kimiserve.engines.llamacpp.sampling import SamplerChain
from kimiserve.engines.llamacpp.stops import TextStream
from kimiserve.engines.llamacpp.toolcalls import CALL_OPEN, THINK_END, call_id, parse_call, partial_call

THINK, CLOSING, ANSWER, CALL, NEXT = range(5)


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
        max_calls: int = 1,
        first_index: int = 0,
        call_close: tuple[int, ...] = (),
        next_call: tuple[int, ...] = (),
        eog: tuple[int, ...] = (),
        logprobs: bool = False,
    ) -> None:
        self._sampler = sampler
        self._piece = piece
        self._tokenize = tokenize
        self._budget = budget
        self._think_close = think_close
        self._tools = tools
        self._forced_call = forced_call  # the marker's tokens, written by the engine
        self._lazy_call = lazy_call
        # Several calls: `</tool_call>` (call_close), then EOG or `\n<tool_call>` (next_call)
        self._max_calls = max_calls if call_close and next_call else 1
        self._first_index = first_index  # the conversation's calls before this turn
        self._call_close = call_close
        self._next_call = next_call
        self._eog = eog
        self.calls = 0  # complete calls so far in this turn
        self._made: set[tuple[str, str]] = set()  # (name, arguments) of this turn's calls
        self.choices: tuple[int, ...] = ()  # non-empty: the only tokens the next sample may be
        self._chosen = False  # NEXT: the model chose another call
        self._think = TextStream((THINK_END,))
        self._text = TextStream(stops + ((CALL_OPEN,) if lazy_call else ()))
        self._closing = False
        self._lead = budget > 0  # strip the whitespace that follows `</think>`
        self._marker_left = 0
        self._call = bytearray()
        self._logprobs = logprobs  # text deltas carry their tokens' logprobs
        self._pending: list[TokenLogprob] = []  # of answer tokens whose text is not out yet
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
    def writes_text(self) -> bool:
        """The next token is answer text (its logprob is wanted, when asked)."""
        return self.phase == ANSWER and self._marker_left == 0

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

    def feed(self, token: int, logprob: TokenLogprob | None = None) -> list[Item]:
        """The items one token makes; `logprob`: the token's, for an answer token when asked."""
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
            return self._end_call() if tail is not None and tail.done else []
        if self.phase == NEXT:
            return self._next()
        if self._marker_left > 0:
            self._marker_left -= 1
            if self._marker_left == 0:
                self.phase = CALL
                self._sampler.activate([])
            return []
        if logprob is not None:
            self._pending.append(logprob)
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
        raw = text
        if self._lead:
            text = text.lstrip()
            self._lead = not text
        if not text:
            # Held back (a stop prefix, a character not complete yet): its tokens wait for the
            # text. Dropped (leading whitespace, a stop string): so are their logprobs.
            if raw or self._text.stopped:
                self._pending.clear()
            return []
        logprobs = None
        if self._logprobs:
            logprobs, self._pending = tuple(self._pending), []
        return [TextDelta(text, logprobs)]

    def _end_call(self) -> list[Item]:
        """A body is complete: its call, then the end of the turn or the way to another call."""
        call = parse_call(self._call.decode("utf-8", errors="replace"), self._tools, "")
        self._call.clear()
        if call is None:  # not a call of the tools (the grammar makes this unreachable)
            self.call_done = True
            return []
        if (call.name, call.arguments) in self._made:  # a repeat ends the turn, unreported
            self.call_done = True
            return []
        self._made.add((call.name, call.arguments))
        call = replace(call, id=call_id(call.name, self._first_index + self.calls))
        self.calls += 1
        if self.calls >= self._max_calls or self._sampler.closing:
            self.call_done = True  # the scheduler ends the turn: `tool_calls`
        else:
            self.phase = NEXT
            self._chosen = False
            self._sampler.restart()
            self.forced.extend(self._call_close)
            self._marker_left = len(self._call_close)
        return [ToolCallEvent(call)]

    def _next(self) -> list[Item]:
        """Between calls: the engine's `</tool_call>`, the model's choice, the engine's
        `\n<tool_call>` (its first token the model's), then the next body."""
        if self._marker_left > 0:  # a token the engine wrote
            self._marker_left -= 1
            if self._marker_left > 0:
                return []
            if not self._chosen:  # `</tool_call>` written: the model chooses
                self.choices = (self._next_call[0], *self._eog)
                return []
        elif not self._chosen:  # the model chose the next call (end-of-generation never gets here)
            self._chosen = True
            self.choices = ()
            rest = self._next_call[1:]
            self.forced.extend(rest)
            self._marker_left = len(rest)
            if rest:
                return []
        self.phase = CALL
        self._sampler.activate([])
        return []

    def finish(self, reason: FinishReason) -> tuple[list[Item], FinishReason]:
        """The items that end the turn, and its finish reason."""
        if self.phase == THINK:
            text = self._think.flush()
            return ([ReasoningDelta(text)] if text else []), reason
        if self.phase == ANSWER and self._marker_left > 0 and reason == "length":
            return self._cut_call(""), reason  # a forced call cut inside its marker
        if self.phase == ANSWER:
            return self._answer(self._text.flush()), reason
        if self.calls and (self.call_done or self.phase == NEXT):
            return [], "tool_calls"
        if self.phase == CALL and reason == "length":
            return self._cut_call(self._call.decode("utf-8", errors="replace")), reason
        return [], reason

    def _cut_call(self, body: str) -> list[Item]:
        """The call a body cut by max_tokens began (none when its tool cannot be told)."""
        cut = partial_call(body, self._tools, "")
        if cut is None:
            return []
        return [ToolCallEvent(replace(cut, id=call_id(cut.name, self._first_index + self.calls)))]
