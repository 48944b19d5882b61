"""Orchestration of one request: admit → run on the engine → settle → record.

Both protocols call this with a canonical GenerationRequest; nothing here knows either wire
format. `numberResults` / `n` fan out into several generations with distinct seeds.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from kimiserve.domain.types import (
    Event,
    Finished,
    FinishReason,
    GenerationRequest,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from kimiserve.engines.registry import ServedModel
from kimiserve.errors import EngineError, InsufficientCredits, KimiserveError
from kimiserve.platform.api_keys import Principal
from kimiserve.storage.sql.accounts import SqlAccountStore
from kimiserve.storage.sql.usage import SqlUsageStore, UsageRow

log = logging.getLogger(__name__)

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
    cost: float


def fan_out(base: GenerationRequest, seed: int | None, n: int) -> list[Generation]:
    """N generations with seeds seed, seed+1, … (a random uint32 when none is given).

    The engine gets the seed reduced to 32 bits; the client is told the seed it can send back.
    """
    first = seed if seed is not None else secrets.randbelow(UINT32)
    out = []
    for i in range(n):
        client_seed = first + i
        out.append(
            Generation(client_seed, replace(base, sampling=replace(base.sampling, seed=client_seed % UINT32)))
        )
    return out


class Accumulator:
    """Collects one generation's events into its result (for sync replies and stream endings)."""

    def __init__(self, seed: int, model: ServedModel) -> None:
        self._seed = seed
        self._model = model
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.calls: list[ToolCall] = []
        self.usage = Usage(0, 0)
        self.finish: FinishReason = "unknown"

    def add(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            self.text.append(event.text)
        elif isinstance(event, ReasoningDelta):
            self.reasoning.append(event.text)
        elif isinstance(event, ToolCallEvent):
            self.calls.append(event.call)
        elif isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, Finished):
            self.finish = event.reason

    def result(self) -> GenerationResult:
        return GenerationResult(
            seed=self._seed,
            text="".join(self.text),
            reasoning="".join(self.reasoning),
            tool_calls=tuple(self.calls),
            usage=self.usage,
            finish_reason=self.finish,
            cost=self._model.price.cost(self.usage),
        )


class Inference:
    def __init__(self, accounts: SqlAccountStore, usage: SqlUsageStore) -> None:
        self._accounts = accounts
        self._usage = usage

    async def admit(self, principal: Principal) -> None:
        """Refuse work for a metered account that has run out of credit."""
        account = await self._accounts.get_account(principal.account_id)
        if account is not None and account.balance_usd is not None and account.balance_usd <= 0:
            raise InsufficientCredits("The account balance is exhausted.")

    async def settle(
        self, principal: Principal, model: ServedModel, usage: Usage, request_id: str, protocol: str
    ) -> float:
        """Record one successful generation's usage and cost, and charge it. Returns the cost."""
        cost = model.price.cost(usage)
        await self._usage.record(
            UsageRow(
                account_id=principal.account_id,
                request_id=request_id,
                protocol=protocol,
                model=model.id,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cached_tokens=usage.cached_tokens,
                reasoning_tokens=usage.reasoning_tokens,
                cost_usd=cost,
            )
        )
        await self._accounts.charge(principal.account_id, cost)
        return cost

    async def stream(
        self,
        principal: Principal,
        model: ServedModel,
        generation: Generation,
        *,
        request_id: str,
        protocol: str,
    ) -> AsyncIterator[Event]:
        """The engine's events, settled when the generation finishes (never when it fails)."""
        usage: Usage | None = None
        events = model.engine.generate(generation.request)
        try:
            async for event in events:
                if isinstance(event, Usage):
                    usage = event
                elif isinstance(event, Finished) and usage is not None:
                    await self.settle(principal, model, usage, request_id, protocol)
                yield event
        except KimiserveError:
            raise
        except Exception as exc:  # a bug in an engine: never let it look like a client error
            log.exception("engine %s failed", model.engine.name)
            raise EngineError("The engine failed while generating.") from exc
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    async def run(
        self,
        principal: Principal,
        model: ServedModel,
        generation: Generation,
        *,
        request_id: str,
        protocol: str,
    ) -> GenerationResult:
        acc = Accumulator(generation.seed, model)
        async for event in self.stream(
            principal, model, generation, request_id=request_id, protocol=protocol
        ):
            acc.add(event)
        return acc.result()

    async def run_all(
        self,
        principal: Principal,
        model: ServedModel,
        generations: list[Generation],
        *,
        request_id: str,
        protocol: str,
    ) -> list[GenerationResult]:
        """Run N generations together; if one fails the others are cancelled and it is raised."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self.run(principal, model, g, request_id=request_id, protocol=protocol))
                    for g in generations
                ]
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None
        return [t.result() for t in tasks]
