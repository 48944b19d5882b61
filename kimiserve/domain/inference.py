"""The front door: every protocol runs inference through `stream()` or `complete()`, nothing else.

    authorize (scope, model allowlist) → resolve the model → check its capabilities → resolve
    media → admit (capacity, rate limits, credit held) → [the caller's `on_admitted`] → run
    (the built-in tools' loop) → settle or release → record usage

A protocol translates its wire request into a `Call` (a `GenerationRequest` plus what the domain
needs to know about it) and renders what comes back; it never sees an admission, a hold, a
permit or a store. Admission is `admission.py`, money `metering.py`, the tools' loop `toolloop.py`.

- `stream(principal, call)` is an async generator. Its first item is `(0, Admitted)`, yielded
  once the request is admitted, so every refusal (403, 402, 429, a bad grammar, a media URL that
  cannot be fetched) raises from the first `anext`, before a protocol sends any byte. Then the
  generations' events, each with its generation's index, as they come (several generations
  interleave). Closing it, or its end, settles or releases every generation in its own
  `finally`; the first error ends it (and cancels the other generations).
- `start(principal, call)` is the same stream with `Admitted` taken: `Started.admitted` and
  `Started.events`.
- `complete(principal, call)` runs every generation to its end and returns their results.
- `count(principal, call)` authorizes, resolves and checks as a run would, then asks the engine
  for the prompt's token count, admitting nothing (Anthropic's `count_tokens`).
- `run(principal, call)` admits now and returns a `Running` that runs later (`complete()`, or
  `each(deliver)`: each generation delivered as it ends, for a webhook per generation), for
  `delivery/`'s async and webhook deliveries.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, cast

from kimiserve.domain.capabilities import Parameters
from kimiserve.domain.capabilities import check as check_capabilities
from kimiserve.domain.principal import Principal, authorize
from kimiserve.domain.results import GenerationResult
from kimiserve.domain.served import ServedModel
from kimiserve.domain.types import GenerationRequest, PipelineEvent
from kimiserve.errors import as_kimiserve_error

if TYPE_CHECKING:
    from kimiserve.domain.admission import Admission, Admissions
    from kimiserve.domain.ports import MediaResolver, WindowState


@dataclass(frozen=True)
class Admitted:
    """What a protocol may know of an admitted request: to render it, never to run it."""

    model: ServedModel
    request_id: str
    seeds: tuple[int, ...]  # per generation, as the client is told
    requests: WindowState | None = None  # the rate-limit windows it was admitted under
    tokens: WindowState | None = None


@dataclass(frozen=True)
class Call:
    """One inference request, as a protocol hands it to the front door."""

    model: str  # the name the client sent
    request: GenerationRequest
    protocol: str  # usage rows and metrics: "openai", "runware", "responses", "anthropic"
    parameters: Parameters = field(default_factory=Parameters)
    n: int = 1
    seed: int | None = None
    request_id: str | None = None
    builtins: tuple[str, ...] = ()  # the built-in tools the request names (`search`, …)
    # Runs once admitted, before any generation (a task's record): a failure releases everything.
    on_admitted: Callable[[Admitted], Awaitable[None]] | None = None


_TEMPLATE_TOKENS = 4  # per message or tool in `estimate_prompt_tokens`: role markers, separators

StreamItem = tuple[int, "PipelineEvent | Admitted"]


@dataclass
class Started:
    admitted: Admitted
    events: AsyncIterator[tuple[int, PipelineEvent]]  # closing them settles or releases


@dataclass(frozen=True)
class Completion:
    admitted: Admitted
    results: list[GenerationResult]


class Inference:
    def __init__(self, admissions: Admissions, media: MediaResolver) -> None:
        self.admissions = admissions
        self.media = media

    async def _admit(self, principal: Principal, call: Call) -> tuple[Admission, Admitted]:
        authorize(principal, "inference")
        model = self.admissions.model(principal, call.model)
        request = replace(call.request, model=model.id)
        check_capabilities(model, request, call.parameters, call.builtins)
        request = await self.media.resolve(principal.account_id, request, call.parameters.media)
        admission = await self.admissions.admit(
            principal,
            model,
            request,
            n=call.n,
            seed=call.seed,
            protocol=call.protocol,
            request_id=call.request_id,
            builtin_tools=call.builtins,
        )
        admitted = Admitted(
            model=model,
            request_id=admission.request_id,
            seeds=tuple(g.seed for g in admission.generations),
            requests=admission.permit.requests,
            tokens=admission.permit.tokens,
        )
        if call.on_admitted is not None:
            try:
                await call.on_admitted(admitted)
            except BaseException:
                await admission.aclose()
                raise
        return admission, admitted

    async def stream(self, principal: Principal, call: Call) -> AsyncGenerator[StreamItem, None]:
        admission, admitted = await self._admit(principal, call)
        try:
            yield 0, admitted
            sources = [admission.stream(i) for i in range(len(admission.generations))]
            events = merge(sources)
            try:
                async for item in events:
                    yield item
            finally:
                await events.aclose()
        finally:
            await admission.aclose()

    async def count(self, principal: Principal, call: Call) -> int:
        """The prompt's tokens as the engine counts them, nothing admitted, held or recorded.

        Media is not fetched (images count as the engine counts their references). An engine
        that cannot count (an upstream pool) gets an estimate: UTF-8 bytes / 4 over the text,
        calls and tools, plus a few tokens per message for the template's role markers — not the
        admission's upper bound, which a hold needs but which would tell an agent its context is
        about four times fuller than it is.
        """
        authorize(principal, "inference")
        model = self.admissions.model(principal, call.model)
        request = replace(call.request, model=model.id)
        check_capabilities(model, request, call.parameters, call.builtins)
        counted = await model.engine.check(request)
        if counted is not None:
            return counted
        return estimate_prompt_tokens(request)

    async def start(self, principal: Principal, call: Call) -> Started:
        events = self.stream(principal, call)
        try:
            _, admitted = await anext(events)
        except BaseException:
            await events.aclose()
            raise
        assert isinstance(admitted, Admitted)
        return Started(admitted, cast(AsyncIterator[tuple[int, PipelineEvent]], events))

    async def complete(self, principal: Principal, call: Call) -> Completion:
        admission, admitted = await self._admit(principal, call)
        async with admission:
            return Completion(admitted, await admission.run_all())

    async def run(self, principal: Principal, call: Call) -> Running:
        """Admit now (refusals raise here), run later: for deliveries that answer before the
        work ends (async tasks, webhooks). The `Running` settles or releases in whichever of its
        calls runs it; the caller must run it (delivery/tasks.py does, in a task it owns)."""
        admission, admitted = await self._admit(principal, call)
        return Running(admission, admitted)


class Running:
    """An admitted request not yet run; `complete()` or `each()` runs it (once)."""

    def __init__(self, admission: Admission, admitted: Admitted) -> None:
        self._admission = admission
        self.admitted = admitted

    async def complete(self) -> list[GenerationResult]:
        """Every generation run together; if one fails the others are cancelled and it is raised."""
        async with self._admission as admission:
            return await admission.run_all()

    async def each(self, deliver: Callable[[int, GenerationResult | BaseException], Awaitable[None]]) -> None:
        """Every generation run together, each delivered as it ends, one's failure not cancelling
        the others; then the first error is raised."""
        admission = self._admission

        async def one(index: int) -> None:
            try:
                result = await admission.run(index)
            except Exception as exc:
                err = as_kimiserve_error(exc)
                await deliver(index, err)
                raise err from exc
            await deliver(index, result)

        async with admission:
            outcomes = await asyncio.gather(
                *(one(i) for i in range(len(admission.generations))), return_exceptions=True
            )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome


def estimate_prompt_tokens(request: GenerationRequest) -> int:
    """A prompt's tokens, estimated for an engine that cannot count them (see `count`)."""
    text = sum(len(m.content.encode("utf-8", "replace")) for m in request.messages)
    text += sum(len(c.arguments) + len(c.name) for m in request.messages for c in m.tool_calls)
    text += sum(len(t.parameters) + len(t.description) + len(t.name) for t in request.tools)
    return -(-text // 4) + _TEMPLATE_TOKENS * (len(request.messages) + len(request.tools))


async def merge(
    sources: Sequence[AsyncGenerator[PipelineEvent, None]],
) -> AsyncGenerator[tuple[int, PipelineEvent], None]:
    """The events of several streams as they come, each with its source's index.

    The first error ends the merge; closing it (or an error) closes every source.
    """
    if len(sources) == 1:  # the usual case (n = 1): no task per event
        try:
            async for event in sources[0]:
                yield 0, event
        finally:
            await sources[0].aclose()
        return
    pending: dict[asyncio.Future[PipelineEvent], int] = {
        asyncio.ensure_future(anext(s)): i for i, s in enumerate(sources)
    }
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=lambda t: pending[t]):
                index = pending.pop(task)
                try:
                    event = task.result()
                except StopAsyncIteration:
                    continue
                pending[asyncio.ensure_future(anext(sources[index]))] = index
                yield index, event
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for source in sources:
            await source.aclose()
