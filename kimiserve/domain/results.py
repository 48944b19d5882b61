"""What generations produce: the seeds they run with, the events gathered into a result, and,
for the built-in tools' loop, usages summed over rounds and the conversation a round leaves.
Used by the pipeline and by protocols rendering results."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from kimiserve.domain.served import ServedModel
from kimiserve.domain.types import (
    BuiltinToolResult,
    Charged,
    Finished,
    FinishReason,
    GenerationRequest,
    Message,
    PipelineEvent,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCall,
    ToolCallEvent,
    ToolCitation,
    Usage,
)

UINT32 = 2**32


@dataclass(frozen=True)
class Generation:
    """One generation to run: the seed the client sees and the request the engine gets."""

    seed: int
    request: GenerationRequest


@dataclass(frozen=True)
class GenerationResult:
    seed: int
    text: str
    reasoning: str
    tool_calls: tuple[ToolCall, ...]
    usage: Usage
    finish_reason: FinishReason
    cost_micros: int
    # The built-in tools' runs, in order (each with its call), for the server-side tool loop.
    builtin: tuple[BuiltinToolResult, ...] = ()
    # The text's tokens with their logprobs, in order; None unless some text delta carried them.
    logprobs: tuple[TokenLogprob, ...] | None = None

    @property
    def citations(self) -> tuple[ToolCitation, ...]:
        """Every built-in run's citations, first occurrence of each URL kept."""
        seen: dict[str, ToolCitation] = {}
        for run in self.builtin:
            for citation in run.citations:
                seen.setdefault(citation.url, citation)
        return tuple(seen.values())


def fan_out(base: GenerationRequest, seed: int | None, n: int) -> list[Generation]:
    """N generations with seeds seed, seed+1, … (a random uint32 when none is given).

    The engine gets the seed reduced to 32 bits; the client is told the seed it can send back.
    """
    first = seed if seed is not None else random.getrandbits(32)  # a seed, not a secret: no syscall
    return [
        Generation(first + i, replace(base, sampling=replace(base.sampling, seed=(first + i) % UINT32)))
        for i in range(n)
    ]


class Accumulator:
    """Collects one generation's events into its result (for sync replies and stream endings)."""

    def __init__(self, seed: int, model: ServedModel) -> None:
        self._seed = seed
        self._model = model
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.calls: list[ToolCall] = []
        self.builtin: list[BuiltinToolResult] = []
        self.usage = Usage(0, 0)
        self.finish: FinishReason = "unknown"
        self.logprobs: list[TokenLogprob] | None = None
        self.charged: int | None = None

    def add(self, event: PipelineEvent) -> None:
        if isinstance(event, TextDelta):
            self.text.append(event.text)
            if event.logprobs is not None:
                if self.logprobs is None:
                    self.logprobs = []
                self.logprobs.extend(event.logprobs)
        elif isinstance(event, ReasoningDelta):
            self.reasoning.append(event.text)
        elif isinstance(event, ToolCallEvent):
            self.calls.append(event.call)
        elif isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, Finished):
            self.finish = event.reason
        elif isinstance(event, BuiltinToolResult):
            self.builtin.append(event)
        elif isinstance(event, Charged):
            self.charged = event.cost_micros

    def result(self) -> GenerationResult:
        return GenerationResult(
            seed=self._seed,
            text="".join(self.text),
            reasoning="".join(self.reasoning),
            tool_calls=tuple(self.calls),
            usage=self.usage,
            finish_reason=self.finish,
            cost_micros=self.charged if self.charged is not None else self._model.price.cost(self.usage),
            builtin=tuple(self.builtin),
            logprobs=tuple(self.logprobs) if self.logprobs is not None else None,
        )


def add_usage(a: Usage, b: Usage) -> Usage:
    """Two usages summed (the rounds of one generation)."""
    return Usage(
        a.prompt_tokens + b.prompt_tokens,
        a.completion_tokens + b.completion_tokens,
        a.cached_tokens + b.cached_tokens,
        a.reasoning_tokens + b.reasoning_tokens,
    )


def with_round(
    request: GenerationRequest, text: str, reasoning: str, outcomes: list[BuiltinToolResult]
) -> GenerationRequest:
    """The conversation after a round: the assistant's turn with its calls, then each result."""
    turn = Message(
        role="assistant", content=text, reasoning=reasoning, tool_calls=tuple(o.call for o in outcomes)
    )
    results = tuple(Message(role="tool", content=o.content, tool_call_id=o.call.id) for o in outcomes)
    return replace(request, messages=(*request.messages, turn, *results))


def not_run(call: ToolCall, max_rounds: int) -> BuiltinToolResult:
    """A built-in call left unrun: the loop reached its bound."""
    message = (
        f"Not run: the generation reached its bound ({max_rounds} rounds or the output token limit) "
        "before another round could use the result."
    )
    return BuiltinToolResult(call, {"error": message}, f"error: {message}", is_error=True)
