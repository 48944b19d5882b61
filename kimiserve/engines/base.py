"""The engine seam: every engine turns one GenerationRequest into an async stream of events.

Two calls per request, in this order:

- `await engine.check(request)` validates and compiles everything the request needs (the prompt
  fits the context, the grammar compiles within its budget, images/videos are supported) and
  raises an `InvalidRequest` (or `GrammarError`) subclass naming the parameter if not; it
  returns the prompt's token count if the engine knows it (credit is held for it). The
  pipeline calls it BEFORE it reserves credit; what it compiles is cached, so `generate` does
  not compile again.
- `engine.generate(request)` returns an async generator of events; consumers close it with
  `contextlib.aclosing`. It raises the same errors as `check` if `check` was skipped, and
  otherwise only `EngineError` subclasses.

An engine never knows which protocol asked. Cancellation is the engine's duty: when the consumer
stops iterating (`aclose()` on the generator), generation stops within a step and its resources
are freed.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from kimiserve.domain.types import Event, GenerationRequest


@dataclass(frozen=True)
class Capabilities:
    context_length: int
    thinking: Literal["native", "budgeted", "none"] = "none"
    tools: Literal["native", "constrained", "none"] = "none"
    vision: bool = False
    max_concurrency: int = 1


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str = ""


@runtime_checkable
class Engine(Protocol):
    name: str
    capabilities: Capabilities

    async def check(self, request: GenerationRequest) -> int | None:
        """Validate and compile; return the prompt's token count when the engine counts it
        (None: the pipeline bounds it from the text)."""

    def generate(self, request: GenerationRequest) -> AsyncGenerator[Event, None]: ...

    async def health(self) -> Health: ...

    async def aclose(self) -> None: ...
