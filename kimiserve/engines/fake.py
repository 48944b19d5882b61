"""A scripted engine for the layers above the engine and for faults.

It speaks the same events as a real engine: the text is derived from the seed and the last
message so tests can tell generations apart; `fail_after` makes a stream die mid-way,
`delay_s` makes it slow and `refuse` makes `check` (and so `generate`) refuse every request
with that error. `script` replays scripted events instead, one list per round of the pipeline's
built-in tools' loop (tool calls included), so the loop is tested without a model. Asked for
logprobs, each word is one token of logprob 0 (the fake is sure), its alternatives made up.
Never used on the main path: tests there run the real model.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from kimiserve.domain.types import (
    Event,
    Finished,
    GenerationRequest,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCallEvent,
    Usage,
)
from kimiserve.engines.base import Capabilities, Health
from kimiserve.errors import EngineError, InvalidRequest, UnsupportedFeature


def _logprob(piece: str, top: int) -> TokenLogprob:
    alternatives = tuple(TokenLogprob(f"alt{k}", -100.0 * k, f"alt{k}".encode()) for k in range(1, top))
    entry = TokenLogprob(piece, 0.0, piece.encode())
    return TokenLogprob(piece, 0.0, piece.encode(), (entry, *alternatives)[:top])


def prompt_tokens(request: GenerationRequest) -> int:
    """The fake's token count: a word is a token, plus one per message."""
    return sum(len(m.content.split()) + 1 for m in request.messages)


@dataclass
class FakeEngine:
    name: str = "fake"
    capabilities: Capabilities = field(
        default_factory=lambda: Capabilities(context_length=4096, max_concurrency=64)
    )
    delay_s: float = 0.0
    fail_after: int | None = None
    refuse: InvalidRequest | None = None  # raised by check() (and so by generate())
    # Per round, the events to replay (the last list again for rounds beyond it); the round is
    # the number of assistant turns after the last user message. A list without `Usage` gets one
    # (a token per event), without `Finished` gets `tool_calls` after a call, else `stop`.
    script: list[list[Event]] | None = None
    requests: list[GenerationRequest] = field(default_factory=list)  # what `script` runs answered

    async def check(self, request: GenerationRequest) -> int:
        """What the fake cannot do: images and videos unless its capabilities say vision.

        Constraints are accepted and ignored (the fake echoes); `refuse` scripts a refusal.
        """
        if self.refuse is not None:
            raise self.refuse
        if not self.capabilities.vision and request.images:
            raise UnsupportedFeature("This model does not accept images.", parameter="images")
        if not self.capabilities.vision and request.videos:
            raise UnsupportedFeature("This model does not accept videos.", parameter="videos")
        return prompt_tokens(request)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Event, None]:
        await self.check(request)
        if self.script is not None:
            async for event in self._replay(request, self.script):
                yield event
            return
        last = request.messages[-1].content if request.messages else ""
        words = [f"echo[{request.sampling.seed}]", *last.split()]
        limit = request.sampling.max_tokens or len(words)
        produced = 0
        for word in words[:limit]:
            if self.fail_after is not None and produced >= self.fail_after:
                raise EngineError("The fake engine failed on purpose.")
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            piece = ("" if produced == 0 else " ") + word
            top = request.sampling.logprobs
            yield TextDelta(piece, None if top is None else (_logprob(piece, top),))
            produced += 1
        yield Usage(prompt_tokens=prompt_tokens(request), completion_tokens=produced)
        yield Finished("length" if produced < len(words) else "stop")

    async def _replay(
        self, request: GenerationRequest, script: list[list[Event]]
    ) -> AsyncGenerator[Event, None]:
        self.requests.append(request)
        round_index = 0
        for message in reversed(request.messages):
            if message.role == "user":
                break
            round_index += message.role == "assistant"
        events = script[min(round_index, len(script) - 1)]
        produced = 0
        for event in events:
            if isinstance(event, TextDelta | ReasoningDelta | ToolCallEvent):
                if self.fail_after is not None and produced >= self.fail_after:
                    raise EngineError("The fake engine failed on purpose.")
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                produced += 1
            yield event
        if not any(isinstance(e, Usage) for e in events):
            yield Usage(prompt_tokens=prompt_tokens(request), completion_tokens=produced)
        if not any(isinstance(e, Finished) for e in events):
            called = any(isinstance(e, ToolCallEvent) for e in events)
            yield Finished("tool_calls" if called else "stop")

    async def health(self) -> Health:
        return Health(ok=True)

    async def aclose(self) -> None:
        return None
