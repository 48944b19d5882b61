"""The one request pipeline every protocol and delivery method goes through.

    authorize (scope, model allowlist) → check (the engine compiles/validates the request)
    → rate limit → reserve credit → run on the engine → settle → record

Protocols translate their wire models into a `GenerationRequest`, call `admit()`, and render
what the returned `Admission` yields; they never touch limits, money or engines themselves.

Money (the policy, also in the README):
- Before the engine runs, each generation's worst case is held: its prompt at the input price
  plus `max_tokens` at the output price (`numberResults` / `n` hold one each). An account
  whose available balance (balance − holds) cannot cover the holds gets `InsufficientCredits`
  (402) before any engine work. Unmetered accounts hold nothing and still record usage and cost.
- A generation that finishes is settled: its real cost charged, its hold released and its
  usage row written, in one transaction.
- A server-side failure (engine error, crash, shutdown) is never charged: the hold is released.
- A client that leaves mid-generation pays for what was produced until then (its prompt and the
  tokens streamed), as OpenAI bills; the usage row says `disconnected`.
- Nothing is charged twice: a hold is settled or released once (the store refuses a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from typing import Protocol

from kimiserve.domain.ports import AccountStore, Hold, InsufficientBalance, LedgerStore, UsageRow
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
from kimiserve.engines.registry import ModelRegistry, ServedModel
from kimiserve.errors import EngineError, Forbidden, InsufficientCredits, KimiserveError, ServiceUnavailable
from kimiserve.platform.api_keys import Principal
from kimiserve.platform.rate_limits import Permit, RateLimiter

log = logging.getLogger(__name__)

UINT32 = 2**32
# Per message, tokens a chat template may add around the text (role markers, separators).
TEMPLATE_TOKENS_PER_MESSAGE = 16


class Observer(Protocol):
    """What the pipeline reports for metrics (implemented with prometheus-client in http/)."""

    def first_token(self, model: str, seconds: float) -> None: ...
    def generation(self, model: str, output_tokens: int, seconds: float) -> None: ...
    def reserved(self, delta_micros: int) -> None: ...


class NoObserver:
    def first_token(self, model: str, seconds: float) -> None:
        return None

    def generation(self, model: str, output_tokens: int, seconds: float) -> None:
        return None

    def reserved(self, delta_micros: int) -> None:
        return None


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


def fan_out(base: GenerationRequest, seed: int | None, n: int) -> list[Generation]:
    """N generations with seeds seed, seed+1, … (a random uint32 when none is given).

    The engine gets the seed reduced to 32 bits; the client is told the seed it can send back.
    """
    first = seed if seed is not None else secrets.randbelow(UINT32)
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
            cost_micros=self._model.price.cost(self.usage),
        )


def prompt_token_bound(request: GenerationRequest) -> int:
    """An upper bound of the prompt's tokens for an engine that cannot count them: a byte-level
    tokenizer never makes more tokens than UTF-8 bytes, plus what the template adds."""
    text = sum(len(m.content.encode("utf-8", "replace")) for m in request.messages)
    calls = sum(len(c.arguments) + len(c.name) for m in request.messages for c in m.tool_calls)
    tools = sum(len(t.parameters) + len(t.description) + len(t.name) for t in request.tools)
    return text + calls + tools + TEMPLATE_TOKENS_PER_MESSAGE * (len(request.messages) + len(request.tools))


@dataclass
class Admission:
    """An admitted request: its model, its generations, their holds and the rate-limit permit.

    `stream(i)` / `run(i)` / `run_all()` run the generations; `aclose()` (or `async with`)
    releases whatever was not settled and the permit. The owner must close it exactly once.
    """

    pipeline: Pipeline
    principal: Principal
    model: ServedModel
    generations: list[Generation]
    protocol: str
    request_id: str
    prompt_tokens: int
    holds: list[Hold | None]  # per generation: its hold, None when unmetered
    permit: Permit
    _open: list[bool] = field(default_factory=list, repr=False)  # per generation: not yet settled
    _running: list[bool] = field(default_factory=list, repr=False)  # per generation: stream() active
    _closed: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self._open = [True] * len(self.generations)
        self._running = [False] * len(self.generations)

    async def __aenter__(self) -> Admission:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def stream(self, index: int) -> AsyncGenerator[Event, None]:
        """Generation `index`'s events; settled when it finishes, released when it fails."""
        generation = self.generations[index]
        pipeline = self.pipeline
        started = time.monotonic()
        first: float | None = None
        produced = 0
        usage: Usage | None = None
        self._running[index] = True
        try:
            async with contextlib.aclosing(self.model.engine.generate(generation.request)) as events:
                while True:
                    event = await self._next(index, events)
                    if event is None:
                        break
                    if isinstance(event, TextDelta | ReasoningDelta | ToolCallEvent):
                        produced += 1
                        if first is None:
                            first = time.monotonic()
                            pipeline.observer.first_token(self.model.id, first - started)
                    elif isinstance(event, Usage):
                        usage = event
                    elif isinstance(event, Finished):
                        final = usage if usage is not None else Usage(self.prompt_tokens, produced)
                        ended = time.monotonic()
                        timing = (first - started, ended - first) if first is not None else None
                        # its failure is ours, not the engine's
                        await self._settle(index, final, "completed", timing)
                        pipeline.observer.generation(
                            self.model.id, final.completion_tokens, ended - (first or started)
                        )
                    yield event
        except (GeneratorExit, asyncio.CancelledError):
            # The consumer stopped: a client that left pays for what it got; a shutdown does not.
            if pipeline.shutting_down:
                await asyncio.shield(self._release(index))
            else:
                cut = Usage(self.prompt_tokens, produced)
                await asyncio.shield(self._settle(index, cut, "disconnected"))
            raise
        except BaseException:
            await asyncio.shield(self._release(index))
            raise
        finally:
            self._running[index] = False

    async def _next(self, index: int, events: AsyncGenerator[Event, None]) -> Event | None:
        """The engine's next event (None at its end); an engine's unexpected exception becomes an
        EngineError, so a bug in an engine never looks like a client error."""
        try:
            return await anext(events)
        except StopAsyncIteration:
            return None
        except (KimiserveError, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.exception("engine %s failed", self.model.engine.name)
            raise EngineError("The engine failed while generating.") from exc

    async def run(self, index: int) -> GenerationResult:
        acc = Accumulator(self.generations[index].seed, self.model)
        async with contextlib.aclosing(self.stream(index)) as events:
            async for event in events:
                acc.add(event)
        return acc.result()

    async def run_all(self) -> list[GenerationResult]:
        """Run every generation together; if one fails the others are cancelled and it is raised."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self.run(i)) for i in range(len(self.generations))]
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None
        return [t.result() for t in tasks]

    async def _settle(
        self, index: int, usage: Usage, outcome: str, timing: tuple[float, float] | None = None
    ) -> None:
        """`timing`: (seconds to the first token, seconds from it to the end), when measured."""
        if not self._end(index):
            return
        hold = self.holds[index]
        cost = self.model.price.cost(usage)
        row = UsageRow(
            account_id=self.principal.account_id,
            key_id=self.principal.key_id,
            request_id=self.request_id,
            protocol=self.protocol,
            model=self.model.id,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cost_micros=cost,
            outcome=outcome,
            ttft_ms=round(timing[0] * 1000) if timing else None,
            decode_ms=round(timing[1] * 1000) if timing else None,
        )
        try:
            await self.pipeline.settle_hook(hold, row)
        except BaseException:
            if hold is not None:  # the settlement rolled back: give the hold back instead
                await asyncio.shield(self.pipeline.release_hold(hold))
            raise
        self.pipeline.forget_hold(hold)
        await self.permit.record_tokens(usage.completion_tokens)

    def _end(self, index: int) -> bool:
        """Mark generation `index` ended (once: False if it had already) and free its place."""
        if not self._open[index]:
            return False
        self._open[index] = False
        self.pipeline.free_places(self.model.engine, 1)
        return True

    async def _release(self, index: int) -> None:
        if not self._end(index):
            return
        hold = self.holds[index]
        if hold is not None:
            await self.pipeline.release_hold(hold)

    async def aclose(self) -> None:
        """Release the holds of generations that never ran; a running stream settles or releases
        its own when it ends (so a client that left is charged, not refunded, by a race)."""
        if self._closed:
            return
        self._closed = True
        try:
            for index in range(len(self.holds)):
                if not self._running[index]:
                    await asyncio.shield(self._release(index))
        finally:
            self.permit.release()


class Pipeline:
    def __init__(
        self,
        registry: ModelRegistry,
        ledger: LedgerStore,
        limiter: RateLimiter,
        accounts: AccountStore,
        observer: Observer | None = None,
        *,
        max_waiting: int = 256,
    ) -> None:
        """`max_waiting`: generations admitted per engine beyond what it decodes at once."""
        self.registry = registry
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

    # ---- authorize ----------------------------------------------------------------------

    @staticmethod
    def authorize(principal: Principal, scope: str) -> None:
        """403 unless the key has `scope`."""
        if scope not in principal.scopes:
            raise Forbidden(
                f"This API key lacks the '{scope}' scope.", code="missingScope", parameter="scope"
            )

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

    # ---- admit --------------------------------------------------------------------------

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
    ) -> Admission:
        """Check, rate-limit and reserve; the returned Admission runs the generations."""
        self.authorize(principal, "inference")
        request = replace(request, cache_scope=principal.account_id)
        engine = model.engine
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
        try:
            account = await self.accounts.get_account(principal.account_id)
            if account is not None and account.metered:
                worst = model.price.worst_case(prompt_tokens, max_tokens)
                taken = [Hold(uuid.uuid4().hex, principal.account_id, request_id, worst) for _ in range(n)]
                try:
                    await self.ledger.reserve(taken)
                except InsufficientBalance:
                    raise InsufficientCredits(
                        f"The account's available balance cannot cover this request's worst case "
                        f"(${worst * n / 1_000_000:.6f}: {n} × ({prompt_tokens} prompt tokens + "
                        f"{max_tokens} output tokens)). Top up, or lower maxTokens / numberResults.",
                    ) from None
                self.observer.reserved(worst * n)
                holds = list(taken)
        except BaseException:
            permit.release()
            self.free_places(engine, n)
            raise
        return Admission(
            pipeline=self,
            principal=principal,
            model=model,
            generations=fan_out(request, seed, n),
            protocol=protocol,
            request_id=request_id,
            prompt_tokens=prompt_tokens,
            holds=holds,
            permit=permit,
        )

    def free_places(self, engine: object, n: int) -> None:
        """Generations admitted and now ended (or never run): their places are free again."""
        key = id(engine)
        self.outstanding[key] -= n
        if self.outstanding[key] <= 0:
            del self.outstanding[key]

    async def release_hold(self, hold: Hold) -> None:
        await self.ledger.release(hold)
        self.forget_hold(hold)

    def forget_hold(self, hold: Hold | None) -> None:
        """A hold settled or released: no longer outstanding (for the reserved-credit gauge)."""
        if hold is not None:
            self.observer.reserved(-hold.amount_micros)
