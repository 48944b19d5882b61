"""The llama.cpp worker process: killed or crashed mid-generation, the engine survives."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import replace

import pytest

from kimiserve.domain.types import Constraint, GenerationRequest, Message, Sampling, TextDelta
from kimiserve.engines.llamacpp import LlamaCppEngine
from kimiserve.errors import EngineCrashed, RequestCrashedEngine
from tests.engines.test_llamacpp import STORY, ask, run


async def first_token_then(engine: LlamaCppEngine, request: GenerationRequest, sig: int) -> float:
    """Start `request`, send `sig` to the worker after its first token; seconds until the stream
    raised EngineCrashed."""
    stream = engine.generate(request)
    try:
        async for event in stream:
            if isinstance(event, TextDelta):
                break
        pid = engine.worker_pid  # the worker serving the stream (after a restart, a new one)
        assert pid is not None
        killed = time.monotonic()
        os.kill(pid, sig)
        with pytest.raises(EngineCrashed) as caught:
            async for _ in stream:
                pass
        assert caught.value.status == 503 and caught.value.code == "inferenceError"
        return time.monotonic() - killed
    finally:
        await stream.aclose()


@pytest.mark.timeout(600)
async def test_sigkill_mid_generation_ten_times(engine: LlamaCppEngine) -> None:
    long = ask(STORY, temperature=0.8, seed=1, max_tokens=400, ignore_eos=True)
    for round_ in range(10):
        bystander = asyncio.create_task(
            run(engine, replace(long, sampling=replace(long.sampling, seed=round_)))
        )
        elapsed = await first_token_then(engine, long, signal.SIGKILL)
        assert elapsed < 5.0, f"round {round_}: the stream ended {elapsed:.1f} s after the kill"
        with pytest.raises(EngineCrashed):  # the other stream in flight ends too
            await asyncio.wait_for(bystander, 5.0)
        after = await run(engine, ask("Say hello.", temperature=0, max_tokens=4))
        assert after.usage.completion_tokens > 0
    assert engine.restarts == 10
    assert (await engine.health()).ok
    # SIGKILL comes from outside (OOM killer, operator): it never marks the request as a crasher.
    await run(engine, replace(long, sampling=replace(long.sampling, max_tokens=4)))


@pytest.mark.timeout(300)
async def test_request_that_crashes_the_worker_twice_is_refused(engine: LlamaCppEngine) -> None:
    culprit = GenerationRequest(
        model="smollm2",
        messages=(Message("user", "A request that (we pretend) segfaults llama.cpp."),),
        sampling=Sampling(temperature=0.8, seed=5, max_tokens=300, ignore_eos=True),
    )
    for _ in range(2):  # SIGSEGV: what a native crash looks like from outside
        await first_token_then(engine, culprit, signal.SIGSEGV)
    with pytest.raises(RequestCrashedEngine) as caught:
        await engine.check(culprit)
    assert caught.value.status == 400 and caught.value.parameter == "messages"
    with pytest.raises(RequestCrashedEngine):
        await engine.generate(culprit).__anext__()
    other = await run(engine, ask("Say hello.", temperature=0, max_tokens=4))  # others still run
    assert other.usage.completion_tokens > 0


@pytest.mark.timeout(300)
async def test_a_schema_that_crashes_the_worker_while_compiling_is_refused(engine: LlamaCppEngine) -> None:
    nested: dict[str, object] = {"type": "string"}
    for _ in range(30):
        nested = {"type": "object", "properties": {"x": nested}}
    slow = {"type": "object", "properties": {f"k{i}": nested for i in range(4000)}}  # compiles > 0.5 s
    culprit = GenerationRequest(
        model="smollm2",
        messages=(Message("user", "Fill in the form."),),
        constraint=Constraint(json_schema=json.dumps(slow)),
    )
    for _ in range(2):
        await engine.check(GenerationRequest(model="smollm2", messages=(Message("user", "hi"),)))  # ready
        checking = asyncio.create_task(engine.check(culprit))
        await asyncio.sleep(0.5)
        pid = engine.worker_pid
        assert pid is not None
        os.kill(pid, signal.SIGSEGV)
        with pytest.raises(EngineCrashed):
            await asyncio.wait_for(checking, 5.0)
    with pytest.raises(RequestCrashedEngine) as caught:
        await engine.check(culprit)
    assert caught.value.parameter == "constraint"
