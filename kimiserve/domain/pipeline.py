"""The one request pipeline every protocol and delivery method goes through.

    authorize (scope, model allowlist) → check (the engine compiles/validates the request)
    → rate limit → reserve credit → run on the engine → settle → record

Protocols translate their wire models into a `GenerationRequest`, call `admit()`, and render
what the returned `Admission` yields; they never touch limits, money or engines themselves.
(About 600 lines on purpose: admission, the built-in tools' rounds and settlement keep one money
invariant together; what generations produce is in `results.py`.)

Money (the policy, also in the README):
- Before the engine runs, each generation's worst case is held: its prompt at the input price
  plus `max_tokens` at the output price (`numberResults` / `n` hold one each). An account
  whose available balance (balance − holds) cannot cover the holds gets `InsufficientCredits`
  (402) before any engine work. Unmetered accounts hold nothing and still record usage and cost.
- A generation that finishes is settled: its real cost charged, its hold released and its
  usage row written, in one transaction. The charge never exceeds the hold: an engine that
  reports more than the worst case (an upstream's re-asked tool call, a prompt it counts larger
  than the pipeline's bound, e.g. images) is charged the hold, so a balance never goes below
  zero; the usage row keeps the tokens reported, its cost the amount charged.
- A server-side failure (engine error, crash, shutdown) is never charged: the hold is released.
  One exception: an engine error marked `settles_delivered` (an upstream whose stream died or
  stalled after its first token: `UpstreamBroken`, a mid-stream read timeout) that ends a
  *streamed* generation (`stream()`, events delivered as they come) after events reached the
  client charges what was delivered: the prompt as the pipeline counted it plus the events streamed
  (one token each), with the usage row `interrupted`; the client still gets the terminal error.
  A failure before the first event, or in `run()` (nothing is delivered before the result), is
  released as before.
- A client that leaves mid-generation pays for what was produced until then (its prompt and the
  tokens streamed), as OpenAI bills; the usage row says `disconnected`.
- Nothing is charged twice: a hold is settled or released once (the store refuses a second).

The built-in tools' loop (`admit(builtin_tools=…)`, e.g. `search`, `codeInterpreter`):
- Admission checks each tool can run here (`ToolRegistry.require`: ToolUnavailable names
  `tools`) and adds their function specs to the request, before anything is held.
- A generation is then one or more rounds. When a round's engine emits a `ToolCallEvent` for a
  built-in, the stream yields `BuiltinToolCall` instead; when the round ends, each call is run
  (a bad call or failed run is a `BuiltinToolResult` with `is_error`, told to the model, never
  raised), its `BuiltinToolResult` yielded, the assistant turn and the tool messages appended,
  and the next round generated. A call to a client function ends the loop (finish `tool_calls`).
- Bounds: at most `max_tool_rounds` rounds, the last without the built-ins (calls it still makes
  are not run, and the finish is `length`); `max_tokens` bounds all rounds together; a forced
  tool choice forces the first round only.
- Money: each round holds its own worst case before it runs (its prompt, counted again, plus the
  output tokens left) and is settled when it ends, charged what it adds to the cost of the rounds
  so far, so the charges add up to the cost of the summed usage. A balance that cannot cover the
  next round is `InsufficientCredits` there. One `Usage` (the rounds' sum) and one `Finished`
  end the stream. Leaving mid-round charges that round's tokens so far; leaving during a tool
  run cancels it and charges nothing more; a failure or shutdown releases the current round
  (but an upstream's mid-stream death in a stream charges what the round delivered, as above).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from kimiserve.domain.ports import (
    AccountStore,
    Hold,
    InsufficientBalance,
    LedgerStore,
    NoObserver,
    Observer,
    UsageRow,
)
from kimiserve.domain.principal import Principal
from kimiserve.domain.results import (
    Accumulator,
    Generation,
    GenerationResult,
    add_usage,
    fan_out,
    not_run,
    with_round,
)
from kimiserve.domain.types import (
    BuiltinToolCall,
    BuiltinToolResult,
    Charged,
    Event,
    Finished,
    FinishReason,
    GenerationRequest,
    PipelineEvent,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallEvent,
    ToolChoice,
    ToolSpec,
    Usage,
)
from kimiserve.engines.registry import ModelRegistry, ServedModel
from kimiserve.errors import (
    EngineError,
    Forbidden,
    InsufficientCredits,
    KimiserveError,
    ServiceUnavailable,
    UnsupportedFeature,
)
from kimiserve.platform.rate_limits import Permit, RateLimiter

if TYPE_CHECKING:
    from kimiserve.tools.builtin import BuiltinTool, ToolRegistry

log = logging.getLogger(__name__)

_OUTPUT = (TextDelta, ReasoningDelta, ToolCallEvent)  # the events a round produces

DEFAULT_TOOL_ROUNDS = 8
# Per message, tokens a chat template may add around the text (role markers, separators).
TEMPLATE_TOKENS_PER_MESSAGE = 16


def prompt_token_bound(request: GenerationRequest) -> int:
    """An upper bound of the prompt's tokens for an engine that cannot count them: a byte-level
    tokenizer never makes more tokens than UTF-8 bytes, plus what the template adds."""
    text = sum(len(m.content.encode("utf-8", "replace")) for m in request.messages)
    calls = sum(len(c.arguments) + len(c.name) for m in request.messages for c in m.tool_calls)
    tools = sum(len(t.parameters) + len(t.description) + len(t.name) for t in request.tools)
    return text + calls + tools + TEMPLATE_TOKENS_PER_MESSAGE * (len(request.messages) + len(request.tools))


def _settles_delivered(exc: BaseException) -> bool:
    """An engine failure that charges what a stream delivered before it (an upstream's mid-stream
    death); every other failure is released."""
    return isinstance(exc, EngineError) and exc.settles_delivered


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
    builtins: dict[str, BuiltinTool] = field(default_factory=dict)  # the request's built-in tools
    max_rounds: int = 1  # generation rounds of the built-in tools' loop
    metered: bool = False  # each round holds credit
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

    async def stream(self, index: int, *, live: bool = True) -> AsyncGenerator[PipelineEvent, None]:
        """Generation `index`'s events; settled when it finishes, released when it fails.

        `live`: each event reaches the client as it is yielded (a stream), so an upstream that
        dies after delivering some is charged for them (module docstring); `run()` passes False.

        With built-in tools this is the tool loop (module docstring): one or more rounds, each
        held and settled on its own, ending with one `Usage` (the rounds' sum) and one `Finished`.
        """
        request = self.generations[index].request
        pipeline = self.pipeline
        started = time.monotonic()
        first: float | None = None
        total = Usage(0, 0)  # the settled rounds'
        charged = 0  # micro-USD charged for the settled rounds
        prompt_tokens = self.prompt_tokens  # this round's
        produced = 0  # this round's events
        in_round = False  # a round's hold is taken and not yet settled
        self._running[index] = True
        try:
            for round_number in range(1, self.max_rounds + 1):
                last_round = round_number == self.max_rounds
                if round_number > 1:
                    request, prompt_tokens = await self._next_round(index, request, total)
                round_request = self._without_builtins(request) if last_round else request
                in_round = True
                produced = 0
                usage: Usage | None = None
                finish: FinishReason | None = None
                text: list[str] = []
                reasoning: list[str] = []
                builtin_calls: list[ToolCall] = []
                client_calls = 0
                engine_events = self.model.engine.generate(round_request)
                async with contextlib.aclosing(engine_events) as events:
                    while (event := await self._next(index, events)) is not None:
                        if isinstance(event, _OUTPUT):
                            produced += 1
                            if first is None:
                                first = time.monotonic()
                                pipeline.observer.first_token(self.model.id, first - started)
                        if isinstance(event, Usage):
                            usage = event
                        elif isinstance(event, Finished):
                            finish = event.reason
                        elif isinstance(event, ToolCallEvent) and event.call.name in self.builtins:
                            builtin_calls.append(event.call)
                            yield BuiltinToolCall(event.call)
                        else:
                            if isinstance(event, TextDelta):
                                text.append(event.text)
                            elif isinstance(event, ReasoningDelta):
                                reasoning.append(event.text)
                            elif isinstance(event, ToolCallEvent):
                                client_calls += 1
                            yield event
                if finish is None:
                    return  # an engine that ends without finishing: released, as before the loop
                round_usage = usage if usage is not None else Usage(prompt_tokens, produced)
                total = add_usage(total, round_usage)
                cost = self.model.price.cost(total) - charged
                budget_left = self._budget_left(total)
                more = (
                    bool(builtin_calls)
                    and not client_calls
                    and not last_round
                    and finish != "length"
                    and (budget_left is None or budget_left > 0)
                )
                runnable = more or (bool(builtin_calls) and bool(client_calls))
                ended = time.monotonic()
                timing = (first - started, ended - first) if first is not None else None
                charged += await self._settle(
                    index, round_usage, "completed", timing, cost=cost, end=not more
                )
                in_round = False
                outcomes: list[BuiltinToolResult] = []
                for call in builtin_calls:
                    if runnable:
                        outcome = await self._run_builtin(call)
                    else:
                        outcome = not_run(call, self.max_rounds)
                    outcomes.append(outcome)
                    yield outcome
                if more:
                    request = with_round(request, "".join(text), "".join(reasoning), outcomes)
                    continue
                if builtin_calls and not runnable:
                    finish = "length"  # the loop's bound was reached with calls left unrun
                pipeline.observer.generation(
                    self.model.id, total.completion_tokens, time.monotonic() - (first or started)
                )
                yield total
                yield Charged(charged)
                yield Finished(finish)
                return
        except (GeneratorExit, asyncio.CancelledError):
            # The consumer stopped: a client that left pays for what it got; a shutdown does not.
            if pipeline.shutting_down or not in_round:
                await asyncio.shield(self._release(index))
            else:
                cut = Usage(prompt_tokens, produced)
                cost = self.model.price.cost(add_usage(total, cut)) - charged
                await asyncio.shield(self._settle(index, cut, "disconnected", cost=cost))
            raise
        except BaseException as exc:
            if live and in_round and produced and _settles_delivered(exc) and not pipeline.shutting_down:
                cut = Usage(prompt_tokens, produced)
                cost = self.model.price.cost(add_usage(total, cut)) - charged
                await asyncio.shield(self._settle(index, cut, "interrupted", cost=cost))
            else:
                await asyncio.shield(self._release(index))
            raise
        finally:
            self._running[index] = False

    # ---- the built-in tools' loop ---------------------------------------------------------

    def _budget_left(self, total: Usage) -> int | None:
        """Output tokens the next round may produce: `max_tokens` bounds every round together
        (the same for every generation: `fan_out` changes only the seed)."""
        limit = self.generations[0].request.sampling.max_tokens
        return None if limit is None else limit - total.completion_tokens

    def _without_builtins(self, request: GenerationRequest) -> GenerationRequest:
        """The last round: the built-in tools withheld, so the model answers."""
        if not self.builtins:
            return request
        tools = tuple(t for t in request.tools if t.name not in self.builtins)
        choice = request.tool_choice
        if not tools:
            choice = ToolChoice(mode="none")
        elif choice.mode == "named" and choice.name in self.builtins:
            choice = ToolChoice()
        return replace(request, tools=tools, tool_choice=choice)

    async def _next_round(
        self, index: int, request: GenerationRequest, total: Usage
    ) -> tuple[GenerationRequest, int]:
        """The next round's request (a forced choice is not forced again; `max_tokens` is what is
        left of it), checked by the engine and held for like the first round."""
        sampling = request.sampling
        budget_left = self._budget_left(total)
        if budget_left is not None:
            sampling = replace(sampling, max_tokens=budget_left)
        choice = request.tool_choice if request.tool_choice.mode in ("auto", "none") else ToolChoice()
        request = replace(request, sampling=sampling, tool_choice=choice)
        engine = self.model.engine
        counted = await engine.check(request)
        prompt_tokens = counted if counted is not None else prompt_token_bound(request)
        if self.metered:
            max_tokens = budget_left if budget_left is not None else engine.capabilities.context_length
            worst = self.model.price.worst_case(prompt_tokens, max_tokens)
            hold = Hold(uuid.uuid4().hex, self.principal.account_id, self.request_id, worst)
            try:
                await self.pipeline.ledger.reserve([hold])
            except InsufficientBalance:
                raise InsufficientCredits(
                    f"The account's available balance cannot cover the next round of the built-in "
                    f"tools' loop (${worst / 1_000_000:.6f}: {prompt_tokens} prompt tokens + "
                    f"{max_tokens} output tokens); the rounds before it were charged.",
                ) from None
            self.pipeline.observer.reserved(worst)
            self.holds[index] = hold
        return request, prompt_tokens

    async def _run_builtin(self, call: ToolCall) -> BuiltinToolResult:
        """Run one built-in call; a bad call or a failed run is a result for the model, never raised."""
        tool = self.builtins[call.name]
        try:
            arguments = json.loads(call.arguments or "{}")
        except json.JSONDecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            message = "The call's arguments are not a JSON object."
            return BuiltinToolResult(call, {"error": message}, f"error: {message}", is_error=True)
        try:
            output = await tool.run(arguments)
        except Exception:
            log.exception("built-in tool %s failed", call.name)
            message = f"The {call.name} tool failed on the server."
            return BuiltinToolResult(call, {"error": message}, f"error: {message}", is_error=True)
        return BuiltinToolResult(
            call,
            dict(output.result),
            output.content_for_model,
            output.citations,
            output.is_error,
        )

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

    async def _settle(
        self,
        index: int,
        usage: Usage,
        outcome: str,
        timing: tuple[float, float] | None = None,
        *,
        cost: int | None = None,
        end: bool = True,
    ) -> int:
        """Charge `usage` (at `cost`, when a loop's round is charged what its cumulative cost
        adds) and end its hold; `end` False: a loop's round, the generation goes on. `timing`:
        (seconds to the first token, seconds from it to the end), when measured. Returns the
        amount charged (capped at the hold; 0 when it was settled already)."""
        if not self._open[index] or (end and not self._end(index)):
            return 0
        hold = self.holds[index]
        self.holds[index] = None  # settled (or, if that fails, released) below: never again
        cost = self.model.price.cost(usage) if cost is None else cost
        if hold is not None and cost > hold.amount_micros:
            log.warning(
                "request %s: usage reported beyond its hold (%d > %d micro-USD); charged the hold",
                self.request_id,
                cost,
                hold.amount_micros,
            )
            cost = hold.amount_micros
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
        return cost

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
        self.holds[index] = None
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

    # ---- authorize ----------------------------------------------------------------------

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
        builtin_tools: Sequence[str] = (),
    ) -> Admission:
        """Check, rate-limit and reserve; the returned Admission runs the generations.

        `builtin_tools`: the built-in tools the request names (`search`, `codeInterpreter`),
        checked here (ToolUnavailable names `tools`) and offered to the engine as functions."""
        request = replace(request, cache_scope=principal.account_id)
        engine = model.engine
        builtins = await self._builtins(model, request, builtin_tools)
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
                taken = [Hold(uuid.uuid4().hex, principal.account_id, request_id, worst) for _ in range(n)]
                try:
                    await self.ledger.reserve(taken)
                except InsufficientBalance:
                    raise InsufficientCredits(
                        f"The account's available balance cannot cover this request's worst case "
                        f"(${worst * n / 1_000_000:.6f}: {n} × ({prompt_tokens} prompt tokens + "
                        f"{max_tokens} output tokens)). Top up, or ask for fewer output tokens or results.",
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
            builtins=builtins,
            max_rounds=self.max_tool_rounds if builtins else 1,
            metered=metered,
        )

    async def _builtins(
        self, model: ServedModel, request: GenerationRequest, names: Sequence[str]
    ) -> dict[str, BuiltinTool]:
        """The built-in tools a request names, each able to run here, or the error naming `tools`."""
        if not names:
            return {}
        if model.engine.capabilities.tools == "none":
            raise UnsupportedFeature(
                f"Tool calling is not available with {model.id}, so its built-in tools are not either.",
                parameter="tools",
            )
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

    async def release_hold(self, hold: Hold) -> None:
        await self.ledger.release(hold)
        self.forget_hold(hold)

    def forget_hold(self, hold: Hold | None) -> None:
        """A hold settled or released: no longer outstanding (for the reserved-credit gauge)."""
        if hold is not None:
            self.observer.reserved(-hold.amount_micros)
