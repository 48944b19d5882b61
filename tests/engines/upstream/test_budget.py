"""Budget forcing over the wire (budget.py) against stand-in vLLM and SGLang processes that reason
as long as told (`#reason-N`): the reasoning is cut at the level's budget and the answer follows
from a continuation request, in the engine's own dialect."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from kimiserve.domain.types import (
    THINKING_BUDGETS,
    Finished,
    ReasoningDelta,
    Sampling,
    TextDelta,
    Usage,
)
from kimiserve.engines.openai_compat import UpstreamEngine
from kimiserve.engines.openai_compat.budget import ZERO_WIDTH_SPACE, Forcing
from kimiserve.errors import EngineError, InvalidRequest
from tests.engines.upstream.conftest import ask, collect, config
from tests.standin.process import StandinProcess

LOW = THINKING_BUDGETS["low"]


@pytest.fixture(scope="module")
def sglang() -> Iterator[StandinProcess]:
    proc = StandinProcess("sglang", reasoning_field="reasoning_content", engine="sglang").start()
    yield proc
    proc.stop()


@pytest.fixture
async def sglang_upstream(sglang: StandinProcess) -> AsyncIterator[UpstreamEngine]:
    engine = UpstreamEngine(config(sglang.url, dialect="sglang"))
    yield engine
    await engine.aclose()


def new_bodies(standin: StandinProcess, before: int) -> list[dict[str, object]]:
    bodies: list[dict[str, object]] = standin.stats()["requests"][before:]
    return bodies


def reasoning_of(events: list[object]) -> list[str]:
    return [e.text for e in events if isinstance(e, ReasoningDelta)]


def text_of(events: list[object]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_low_level_cuts_long_reasoning_at_its_budget_and_the_answer_follows(
    upstream: UpstreamEngine, standin: StandinProcess
) -> None:
    stats = standin.stats()
    before = len(stats["requests"])
    # 20,000 chunks (~4 MB) cannot all sit in socket buffers: the cut must reach the stand-in.
    request = ask("think hard #reason-20000", thinking="low", sampling=Sampling(max_tokens=1000))
    events = await collect(upstream.generate(request))
    reasoning = reasoning_of(events)
    assert len(reasoning) == LOW and reasoning[-1] == f" step{LOW - 1}"  # cut at the budget
    assert text_of(events) == "think hard #reason-20000"  # the continuation's answer, as content
    deadline = time.monotonic() + 5
    while (after := standin.stats())["cancelled"] == stats["cancelled"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    # the first stream was closed, so aborted upstream; the continuation ran to its end
    assert (after["cancelled"], after["completed"]) == (stats["cancelled"] + 1, stats["completed"] + 1)
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("TextDelta") > max(i for i, k in enumerate(kinds) if k == "ReasoningDelta")
    assert events[-1] == Finished("stop")
    first, second = new_bodies(standin, before)
    assert first["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert first["chat_template_kwargs"] == {"thinking": True} and first["max_tokens"] == 1000
    assert second["continue_final_message"] is True and second["add_generation_prompt"] is False
    assert second["chat_template_kwargs"] == {"thinking": False, "preserve_thinking": True}
    assert second["max_tokens"] == 1000 - LOW  # maxTokens bounds reasoning and answer together
    assert second["messages"][:-1] == first["messages"]  # type: ignore[index]
    final = second["messages"][-1]  # type: ignore[index]
    assert final == {
        "role": "assistant",
        "content": ZERO_WIDTH_SPACE,
        "reasoning": "".join(reasoning),
        "reasoning_content": "".join(reasoning),
    }
    # The answer's usage: the first request's prompt (its running usage at the cut), the cut
    # reasoning plus the continuation's answer; the continuation's prompt is not charged again.
    [usage] = [e for e in events if isinstance(e, Usage)]
    assert usage == Usage(4, LOW + 3, 0, LOW)  # "think hard #reason-20000": 3 words + 1 per message


async def test_none_turns_thinking_off_in_one_request(
    upstream: UpstreamEngine, standin: StandinProcess
) -> None:
    before = len(standin.stats()["requests"])
    events = await collect(upstream.generate(ask("plain #reason-2000", thinking="none")))
    assert not reasoning_of(events) and text_of(events) == "plain #reason-2000"
    [body] = new_bodies(standin, before)
    assert body["chat_template_kwargs"] == {"thinking": False}
    assert body["stream_options"] == {"include_usage": True}  # no budget to count


async def test_a_budget_not_reached_costs_one_request(
    upstream: UpstreamEngine, standin: StandinProcess
) -> None:
    before = len(standin.stats()["requests"])
    events = await collect(upstream.generate(ask("short #reason-300", thinking="medium")))
    assert len(reasoning_of(events)) == 300 and text_of(events) == "short #reason-300"
    [body] = new_bodies(standin, before)
    assert body["chat_template_kwargs"] == {"thinking": True}
    [usage] = [e for e in events if isinstance(e, Usage)]
    assert (usage.completion_tokens, usage.reasoning_tokens) == (302, 300)


async def test_max_tokens_spent_by_the_reasoning_ends_without_a_continuation(
    upstream: UpstreamEngine, standin: StandinProcess
) -> None:
    before = len(standin.stats()["requests"])
    request = ask("no room #reason-2000", thinking="low", sampling=Sampling(max_tokens=LOW))
    events = await collect(upstream.generate(request))
    assert len(reasoning_of(events)) == LOW and not text_of(events)
    assert events[-1] == Finished("length")
    assert len(new_bodies(standin, before)) == 1


async def test_sglang_continues_a_prefix_closed_by_think_end(
    sglang_upstream: UpstreamEngine, sglang: StandinProcess
) -> None:
    before = len(sglang.stats()["requests"])
    events = await collect(sglang_upstream.generate(ask("go on #reason-600", thinking="low")))
    reasoning = reasoning_of(events)
    assert len(reasoning) == LOW and text_of(events) == "go on #reason-600"
    first, second = new_bodies(sglang, before)
    assert first["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert second["continue_final_message"] is True and "add_generation_prompt" not in second
    assert second["chat_template_kwargs"] == {"thinking": True}  # the generation prompt opens <think>
    assert second["messages"][-1] == {  # type: ignore[index]
        "role": "assistant",
        "content": "".join(reasoning) + "</think>",
    }
    assert "max_tokens" not in second


async def test_capabilities_say_who_bounds_reasoning() -> None:
    found = {}
    for dialect in ("vllm", "sglang", "moonshot", "openai"):
        engine = UpstreamEngine(config("http://x/v1", dialect=dialect))
        found[dialect] = engine.capabilities.thinking
        await engine.aclose()
    assert found == {"vllm": "budgeted", "sglang": "budgeted", "moonshot": "native", "openai": "none"}


def test_without_running_usage_reasoning_chunks_are_counted_and_the_prompt_estimated() -> None:
    """An upstream that ignores `continuous_usage_stats`: one reasoning chunk counts one token."""
    forcing = Forcing(3, "vllm", None)
    cut = []
    for i in range(5):
        [event] = forcing.first.feed({"choices": [{"index": 0, "delta": {"reasoning": f" r{i}"}}]})
        cut.append(forcing.reached(event))
        if cut[-1]:
            break
    assert cut == [False, False, True]
    body = forcing.continuation({"messages": [{"role": "user", "content": "q"}], "max_tokens": None})
    assert body is not None and body["messages"][-1]["reasoning"] == " r0 r1 r2"
    assert forcing.second is not None
    forcing.second.feed({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 2}})
    # the prompt is estimated as the continuation's minus the reasoning it now carries
    assert forcing.usage() == Usage(7, 3 + 2, 0, 3)


async def test_a_continuation_the_upstream_refuses_is_an_engine_error_not_the_clients(
    standin: StandinProcess,
) -> None:
    """SGLang's continuation sent to vLLM (no `add_generation_prompt: false`): vLLM's 400 is
    kimiserve's doing, so the client gets an engine error after the reasoning, never a 400."""
    engine = UpstreamEngine(config(standin.url, dialect="sglang"))
    events: list[object] = []
    try:
        with pytest.raises(EngineError) as caught:
            async for event in engine.generate(ask("mismatch #reason-400", thinking="low")):
                events.append(event)
    finally:
        await engine.aclose()
    assert not isinstance(caught.value, InvalidRequest) and caught.value.settles_delivered
    assert "refused to continue after the reasoning budget" in caught.value.message
    assert "add_generation_prompt" in caught.value.message
    assert len(reasoning_of(events)) == LOW and not text_of(events)
