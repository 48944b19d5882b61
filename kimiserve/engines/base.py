"""The engine seam: every engine turns one GenerationRequest into an async stream of events.

An engine raises only `EngineError` subclasses (or `InvalidRequest` subclasses for requests it
cannot serve, such as a prompt too long for its context) and never knows which protocol asked.
Cancellation is the engine's duty: when the consumer stops iterating (`aclose()` on the
generator), generation stops within a step and its resources are freed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
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

    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]: ...

    async def health(self) -> Health: ...

    async def aclose(self) -> None: ...
