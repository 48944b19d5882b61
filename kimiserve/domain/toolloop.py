"""The built-in tools' loop: one generation run as one or more rounds on its engine.

Admission checks each built-in tool can run here (`ToolRegistry.require`: ToolUnavailable names
`tools`) and adds their function specs to the request, before anything is held. Then:
- When a round's engine emits a `ToolCallEvent` for a built-in, the stream yields
  `BuiltinToolCall` instead; when the round ends, each call is run (a bad call or failed run is
  a `BuiltinToolResult` with `is_error`, told to the model, never raised), its result yielded,
  the assistant turn and the tool messages appended, and the next round generated. A call to a
  client function ends the loop (finish `tool_calls`).
- Bounds: at most `max_tool_rounds` rounds, the last without the built-ins (calls it still makes
  are not run, and the finish is `length`); `max_tokens` bounds all rounds together; a forced
  tool choice forces the first round only.
- Money (`metering.py`): each round holds its own worst case before it runs (its prompt, counted
  again, plus the output tokens left) and is settled when it ends, charged what it adds to the
  cost of the rounds so far, so the charges add up to the cost of the summed usage. A balance that
  cannot cover the next round is `InsufficientCredits` there. One `Usage` (the rounds' sum), one
  `Charged` and one `Finished` end the stream. Leaving mid-round charges that round's tokens so
  far; leaving during a tool run cancels it and charges nothing more; a failure or shutdown
  releases the current round (but an upstream's mid-stream death in a stream charges what the
  round delivered).
Without built-in tools a generation is this loop's single round.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import TYPE_CHECKING

from kimiserve.domain.metering import prompt_token_bound, settles_delivered
from kimiserve.domain.results import add_usage, not_run, with_round
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
    Usage,
)
from kimiserve.errors import EngineError, KimiserveError

if TYPE_CHECKING:
    from kimiserve.domain.admission import Admission

log = logging.getLogger(__name__)

_OUTPUT = (TextDelta, ReasoningDelta, ToolCallEvent)  # the events a round produces


async def generate(
    admission: Admission, index: int, *, live: bool = True
) -> AsyncGenerator[PipelineEvent, None]:
    """Generation `index`'s events; settled when it finishes, released when it fails.

    `live`: each event reaches the client as it is yielded (a stream), so an upstream that
    dies after delivering some is charged for them (`metering.py`); `run()` passes False.

    With built-in tools this is the tool loop (module docstring): one or more rounds, each
    held and settled on its own, ending with one `Usage` (the rounds' sum), one `Charged` and one
    `Finished`.
    """
    request = admission.generations[index].request
    admissions = admission.admissions
    started = time.monotonic()
    first: float | None = None
    total = Usage(0, 0)  # the settled rounds'
    charged = 0  # micro-USD charged for the settled rounds
    prompt_tokens = admission.prompt_tokens  # this round's
    produced = 0  # this round's events
    in_round = False  # a round's hold is taken and not yet settled
    admission.running[index] = True
    try:
        for round_number in range(1, admission.max_rounds + 1):
            last_round = round_number == admission.max_rounds
            if round_number > 1:
                request, prompt_tokens = await _next_round(admission, index, request, total)
            round_request = _without_builtins(admission, request) if last_round else request
            in_round = True
            produced = 0
            usage: Usage | None = None
            finish: FinishReason | None = None
            text: list[str] = []
            reasoning: list[str] = []
            builtin_calls: list[ToolCall] = []
            client_calls = 0
            engine_events = admission.model.engine.generate(round_request)
            async with contextlib.aclosing(engine_events) as events:
                while (event := await _next(admission, events)) is not None:
                    if isinstance(event, _OUTPUT):
                        produced += 1
                        if first is None:
                            first = time.monotonic()
                            admissions.observer.first_token(admission.model.id, first - started)
                    if isinstance(event, Usage):
                        usage = event
                    elif isinstance(event, Finished):
                        finish = event.reason
                    elif isinstance(event, ToolCallEvent) and event.call.name in admission.builtins:
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
            cost = admission.model.price.cost(total) - charged
            budget_left = _budget_left(admission, total)
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
            charged += await admission.meter.settle(
                index, round_usage, "completed", timing, cost=cost, end=not more
            )
            in_round = False
            outcomes: list[BuiltinToolResult] = []
            for call in builtin_calls:
                if runnable:
                    outcome = await _run_builtin(admission, call)
                else:
                    outcome = not_run(call, admission.max_rounds)
                outcomes.append(outcome)
                yield outcome
            if more:
                request = with_round(request, "".join(text), "".join(reasoning), outcomes)
                continue
            if builtin_calls and not runnable:
                finish = "length"  # the loop's bound was reached with calls left unrun
            admissions.observer.generation(
                admission.model.id, total.completion_tokens, time.monotonic() - (first or started)
            )
            yield total
            yield Charged(charged)
            yield Finished(finish)
            return
    except (GeneratorExit, asyncio.CancelledError):
        # The consumer stopped: a client that left pays for what it got; a shutdown does not.
        if admissions.shutting_down or not in_round:
            await asyncio.shield(admission.meter.release(index))
        else:
            cut = Usage(prompt_tokens, produced)
            cost = admission.model.price.cost(add_usage(total, cut)) - charged
            await asyncio.shield(admission.meter.settle(index, cut, "disconnected", cost=cost))
        raise
    except BaseException as exc:
        if live and in_round and produced and settles_delivered(exc) and not admissions.shutting_down:
            cut = Usage(prompt_tokens, produced)
            cost = admission.model.price.cost(add_usage(total, cut)) - charged
            await asyncio.shield(admission.meter.settle(index, cut, "interrupted", cost=cost))
        else:
            await asyncio.shield(admission.meter.release(index))
        raise
    finally:
        admission.running[index] = False


def _budget_left(admission: Admission, total: Usage) -> int | None:
    """Output tokens the next round may produce: `max_tokens` bounds every round together
    (the same for every generation: `fan_out` changes only the seed)."""
    limit = admission.generations[0].request.sampling.max_tokens
    return None if limit is None else limit - total.completion_tokens


def _without_builtins(admission: Admission, request: GenerationRequest) -> GenerationRequest:
    """The last round: the built-in tools withheld, so the model answers."""
    if not admission.builtins:
        return request
    tools = tuple(t for t in request.tools if t.name not in admission.builtins)
    choice = request.tool_choice
    if not tools:
        choice = ToolChoice(mode="none")
    elif choice.mode == "named" and choice.name in admission.builtins:
        choice = ToolChoice()
    return replace(request, tools=tools, tool_choice=choice)


async def _next_round(
    admission: Admission, index: int, request: GenerationRequest, total: Usage
) -> tuple[GenerationRequest, int]:
    """The next round's request (a forced choice is not forced again; `max_tokens` is what is
    left of it), checked by the engine and held for like the first round."""
    sampling = request.sampling
    budget_left = _budget_left(admission, total)
    if budget_left is not None:
        sampling = replace(sampling, max_tokens=budget_left)
    choice = request.tool_choice if request.tool_choice.mode in ("auto", "none") else ToolChoice()
    request = replace(request, sampling=sampling, tool_choice=choice)
    engine = admission.model.engine
    counted = await engine.check(request)
    prompt_tokens = counted if counted is not None else prompt_token_bound(request)
    if admission.metered:
        max_tokens = budget_left if budget_left is not None else engine.capabilities.context_length
        await admission.meter.reserve_round(index, prompt_tokens, max_tokens)
    return request, prompt_tokens


async def _run_builtin(admission: Admission, call: ToolCall) -> BuiltinToolResult:
    """Run one built-in call; a bad call or a failed run is a result for the model, never raised."""
    tool = admission.builtins[call.name]
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


async def _next(admission: Admission, events: AsyncGenerator[Event, None]) -> Event | None:
    """The engine's next event (None at its end); an engine's unexpected exception becomes an
    EngineError, so a bug in an engine never looks like a client error."""
    try:
        return await anext(events)
    except StopAsyncIteration:
        return None
    except (KimiserveError, asyncio.CancelledError):
        raise
    except Exception as exc:
        log.exception("engine %s failed", admission.model.engine.name)
        raise EngineError("The engine failed while generating.") from exc
