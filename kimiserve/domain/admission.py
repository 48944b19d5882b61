"""Admission: capacity, rate limits and credit, before an engine runs; then the admitted request.

    capacity (generations per engine) → the engine checks the request (grammar, context, media)
    → rate limit (a permit) → credit held (`metering.py`) → an `Admission`

Only the front door (`inference.py`) admits and owns an `Admission`; it runs the generations
(`toolloop.py`) and is closed once, releasing whatever was not settled and the permit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from kimiserve.domain import toolloop
from kimiserve.domain.metering import Meter, prompt_token_bound, reserve
from kimiserve.domain.ports import (
    AccountStore,
    Hold,
    LedgerStore,
    Limiter,
    NoObserver,
    Observer,
    Permit,
    UsageRow,
)
from kimiserve.domain.principal import Principal
from kimiserve.domain.results import Accumulator, Generation, GenerationResult, fan_out
from kimiserve.domain.served import ServedModel, ServedModels
from kimiserve.domain.types import GenerationRequest, PipelineEvent, ToolSpec
from kimiserve.errors import Forbidden, ServiceUnavailable, UnsupportedFeature

if TYPE_CHECKING:
    from kimiserve.tools.builtin import BuiltinTool, ToolRegistry

DEFAULT_TOOL_ROUNDS = 8


@dataclass
class Admission:
    """An admitted request: its model, its generations, their money (`meter`) and its permit.

    `stream(i)` / `run(i)` / `run_all()` run the generations; `aclose()` (or `async with`)
    releases whatever was not settled and the permit. Its owner, the front door, closes it once.
    """

    admissions: Admissions
    principal: Principal
    model: ServedModel
    generations: list[Generation]
    request_id: str
    prompt_tokens: int
    meter: Meter
    permit: Permit
    builtins: dict[str, BuiltinTool] = field(default_factory=dict)  # the request's built-in tools
    max_rounds: int = 1  # generation rounds of the built-in tools' loop
    metered: bool = False  # each round holds credit
    running: list[bool] = field(default_factory=list, repr=False)  # per generation: stream() active
    _closed: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.running = [False] * len(self.generations)

    async def __aenter__(self) -> Admission:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def stream(self, index: int, *, live: bool = True) -> AsyncGenerator[PipelineEvent, None]:
        """Generation `index`'s events; settled when it finishes, released when it fails.

        `live`: each event reaches the client as it is yielded (a stream), so an upstream that
        dies after delivering some is charged for them (`metering.py`); `run()` passes False."""
        return toolloop.generate(self, index, live=live)

    async def run(self, index: int) -> GenerationResult:
        acc = Accumulator(self.generations[index].seed, self.model)
        async with contextlib.aclosing(self.stream(index, live=False)) as events:
            async for event in events:
                acc.add(event)
        return acc.result()

    async def run_all(self) -> list[GenerationResult]:
        """Run every generation together; if one fails the others are cancelled and it is raised."""
        if len(self.generations) == 1:
            return [await self.run(0)]  # no task group for the usual one
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self.run(i)) for i in range(len(self.generations))]
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None
        return [t.result() for t in tasks]

    async def aclose(self) -> None:
        """Release the holds of generations that never ran; a running stream settles or releases
        its own when it ends (so a client that left is charged, not refunded, by a race)."""
        if self._closed:
            return
        self._closed = True
        try:
            for index in range(len(self.generations)):
                if not self.running[index]:
                    await asyncio.shield(self.meter.release(index))
        finally:
            self.permit.release()


class Admissions:
    """Admits requests: per engine capacity, the rate limiter, the ledger; shared by every request."""

    def __init__(
        self,
        registry: ServedModels,
        ledger: LedgerStore,
        limiter: Limiter,
        accounts: AccountStore,
        observer: Observer | None = None,
        *,
        max_waiting: int = 256,
        tools: ToolRegistry | None = None,
        max_tool_rounds: int = DEFAULT_TOOL_ROUNDS,
    ) -> None:
        """`max_waiting`: generations admitted per engine beyond what it decodes at once;
        `tools`: the built-in tools (None: none on this server); `max_tool_rounds`: generation
        rounds one request's built-in tools' loop may take."""
        self.registry = registry
        self.tools = tools
        self.max_tool_rounds = max_tool_rounds
        self.max_waiting = max_waiting
        # Generations admitted and not yet ended, per engine: what admission refuses beyond.
        self.outstanding: Counter[int] = Counter()
        self.ledger = ledger
        self.accounts = accounts
        self.limiter = limiter
        self.observer: Observer = observer if observer is not None else NoObserver()
        self.shutting_down = False
        # The settlement step, replaceable by tests that inject a failure between engine and
        # settlement (the ledger store's own settle is the default).
        self.settle_hook = ledger.settle

    def model(self, principal: Principal, name: str) -> ServedModel:
        """The served model a name resolves to, if the key may use it (403 naming it if not)."""
        model = self.registry.resolve(name)
        if principal.models is not None:
            allowed = {self.registry.resolve(m).id for m in principal.models if self.registry.knows(m)}
            if model.id not in allowed:
                raise Forbidden(
                    f"This API key may not use model {name!r}.", code="modelNotAllowed", parameter="model"
                )
        return model

    async def admit(
        self,
        principal: Principal,
        model: ServedModel,
        request: GenerationRequest,
        *,
        n: int = 1,
        seed: int | None = None,
        protocol: str,
        request_id: str | None = None,
        builtin_tools: Sequence[str] = (),
    ) -> Admission:
        """Check, rate-limit and reserve; the returned Admission runs the generations.

        `builtin_tools`: the built-in tools the request names (`search`, `codeInterpreter`),
        checked here (ToolUnavailable names `tools`) and offered to the engine as functions."""
        request = replace(request, cache_scope=principal.account_id)
        engine = model.engine
        builtins = await self._builtins(builtin_tools)
        if builtins:
            specs = tuple(
                ToolSpec(t.name, t.description, json.dumps(t.parameters)) for t in builtins.values()
            )
            request = replace(request, tools=(*request.tools, *specs))
        capacity = engine.capabilities.max_concurrency + self.max_waiting
        if self.outstanding[id(engine)] + n > capacity:
            raise ServiceUnavailable(
                f"The engine serving {model.id} has {capacity} generations admitted already; "
                "try again shortly.",
                code="serviceUnavailable",
            )
        self.outstanding[id(engine)] += n  # taken now, before any await, so admissions cannot race
        try:
            counted = await engine.check(request)
            prompt_tokens = counted if counted is not None else prompt_token_bound(request)
            max_tokens = request.sampling.max_tokens or engine.capabilities.context_length
            permit = await self.limiter.acquire(principal, prompt_tokens)
        except BaseException:
            self.free_places(engine, n)
            raise
        request_id = request_id or uuid.uuid4().hex
        holds: list[Hold | None] = [None] * n
        metered = False
        try:
            if principal.metered is not None:  # read with the key
                metered = principal.metered
            else:
                account = await self.accounts.get_account(principal.account_id)
                metered = account is not None and account.metered
            if metered:
                worst = model.price.worst_case(prompt_tokens, max_tokens)
                why = (
                    f"this request's worst case: {n} × ({prompt_tokens} prompt tokens + {max_tokens} "
                    "output tokens); top up, or lower the output token limit or the number of results"
                )
                holds = list(await reserve(self.ledger, principal, request_id, worst, n, why=why))
                self.observer.reserved(worst * n)
        except BaseException:
            permit.release()
            self.free_places(engine, n)
            raise

        async def settle(hold: Hold | None, row: UsageRow) -> None:
            await self.settle_hook(hold, row)  # read at settlement: tests replace it

        meter = Meter(
            ledger=self.ledger,
            settle=settle,
            observer=self.observer,
            principal=principal,
            request_id=request_id,
            protocol=protocol,
            model_id=model.id,
            price=model.price,
            holds=holds,
            free_place=lambda: self.free_places(engine, 1),
            record_tokens=permit.record_tokens,
        )
        return Admission(
            admissions=self,
            principal=principal,
            model=model,
            generations=fan_out(request, seed, n),
            request_id=request_id,
            prompt_tokens=prompt_tokens,
            meter=meter,
            permit=permit,
            builtins=builtins,
            max_rounds=self.max_tool_rounds if builtins else 1,
            metered=metered,
        )

    async def _builtins(self, names: Sequence[str]) -> dict[str, BuiltinTool]:
        """The built-in tools a request names, each able to run here, or the error naming `tools`
        (whether the model calls tools at all is `capabilities.check`'s)."""
        if not names:
            return {}
        if self.tools is None:
            raise UnsupportedFeature("This server runs no built-in tools.", parameter="tools")
        unique = list(dict.fromkeys(names))
        found = await asyncio.to_thread(self.tools.require, unique)  # may start a sandbox once
        return {tool.name: tool for tool in found}

    def free_places(self, engine: object, n: int) -> None:
        """Generations admitted and now ended (or never run): their places are free again."""
        key = id(engine)
        self.outstanding[key] -= n
        if self.outstanding[key] <= 0:
            del self.outstanding[key]
