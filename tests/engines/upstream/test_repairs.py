"""What real K2.6 deployments get wrong, replayed by the stand-in, repaired by UpstreamEngine:
each repair bounded, counted by kind, and charged as one request (repairs.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from kimiserve.domain.types import (
    Finished,
    GenerationRequest,
    Message,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallEvent,
    ToolSpec,
    Usage,
)
from kimiserve.engines.openai_compat import UpstreamEngine
from kimiserve.errors import EngineError
from tests.engines.upstream.conftest import WEATHER, ask, collect, config
from tests.standin.process import StandinProcess

TIME = ToolSpec(
    "get_time",
    "The time in a zone.",
    '{"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}',
)


def follow_up(marker: str) -> GenerationRequest:
    """A tool follow-up turn: the call made, its result back, thinking on."""
    history = (
        Message("user", f"weather in Paris? {marker}"),
        Message(
            "assistant",
            "",
            tool_calls=(ToolCall("functions.get_weather:0", "get_weather", '{"city": "Paris"}'),),
            reasoning="I should call the tool.",
        ),
        Message("tool", "sunny", tool_call_id="functions.get_weather:0"),
    )
    return GenerationRequest("k", history, tools=(WEATHER,), thinking="high")


def bodies_since(standin: StandinProcess, before: int) -> list[dict[str, object]]:
    requests: list[dict[str, object]] = standin.stats()["requests"][before:]
    return requests


def text(events: list[object]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def calls(events: list[object]) -> list[ToolCall]:
    return [e.call for e in events if isinstance(e, ToolCallEvent)]


def usage(events: list[object]) -> Usage:
    [u] = [e for e in events if isinstance(e, Usage)]
    return u


async def test_empty_answer_on_a_tool_follow_up_is_continued_once_and_charged_as_one(
    upstream: UpstreamEngine, standin: StandinProcess
) -> None:
    before = len(standin.stats()["requests"])
    events = await collect(upstream.generate(follow_up("#empty-answer")))
    _, again = bodies_since(standin, before)
    # The re-ask continues after the reasoning the model wrote, closed (as budget forcing does).
    assert again["continue_final_message"] is True and again["add_generation_prompt"] is False
    final = again["messages"][-1]  # type: ignore[index]
    assert final["reasoning"] == "The user asks; answer briefly." and final["role"] == "assistant"
    # Never an empty turn: the continuation's call is the answer.
    assert calls(events) == [ToolCall("functions.get_weather:1", "get_weather", '{"city": "Beijing"}')]
    assert events[-1] == Finished("tool_calls")
    # One prompt (the first request's: 4 + 0 + 1 words, + 1 per message), both requests' output:
    # the first's 3 reasoning tokens, the continuation's call (6).
    assert usage(events) == Usage(prompt_tokens=8, completion_tokens=3 + 6, reasoning_tokens=3)
    assert upstream.repairs["empty_answer"] == 1


async def test_reasoning_only_is_asked_again_and_twice_is_a_clear_error(upstream: UpstreamEngine) -> None:
    events = await collect(upstream.generate(ask("tell me #reasoning-only", thinking="high")))
    assert text(events) == "tell me #reasoning-only"  # the continuation answers
    assert upstream.repairs["reasoning_only"] == 1
    delivered: list[object] = []
    with pytest.raises(EngineError) as caught:
        async for event in upstream.generate(ask("tell me #reasoning-only-always", thinking="high")):
            delivered.append(event)
    assert caught.value.code == "emptyAnswer" and caught.value.settles_delivered
    assert not text(delivered) and any(isinstance(e, ReasoningDelta) for e in delivered)
    assert upstream.repairs["reasoning_only"] == 2  # one re-ask, then the error


@pytest.fixture(scope="module")
def moonshot() -> Iterator[StandinProcess]:
    proc = StandinProcess("moonshot", reasoning_field="reasoning_content", engine="moonshot").start()
    yield proc
    proc.stop()


async def test_without_continuation_the_same_body_is_asked_again_its_reasoning_hidden(
    moonshot: StandinProcess,
) -> None:
    engine = UpstreamEngine(config(moonshot.url, dialect="moonshot"))
    try:
        before = len(moonshot.stats()["requests"])
        events = await collect(engine.generate(ask("say hi #empty-answer", thinking="high")))
        first, again = bodies_since(moonshot, before)
        assert first == again
        assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == (
            "The user asks; answer briefly."  # the first request's, shown once
        )
        assert text(events) == "say hi #empty-answer"
        assert usage(events) == Usage(prompt_tokens=4, completion_tokens=3 + 3 + 3, reasoning_tokens=6)
    finally:
        await engine.aclose()


@pytest.mark.parametrize("marker", ["#leak-content", "#leak-reasoning"])
async def test_raw_tool_call_markers_become_a_call_and_leave_the_text(
    upstream: UpstreamEngine, marker: str
) -> None:
    events = await collect(upstream.generate(ask(f"weather? {marker}", tools=(WEATHER,), thinking="high")))
    shown = text(events) + "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert "<|" not in shown and "Beijing" not in shown
    assert calls(events) == [ToolCall("functions.get_weather:0", "get_weather", '{"city": "Beijing"}')]
    assert events[-1] == Finished("tool_calls")
    assert upstream.repairs["tool_markers"] >= 1


@pytest.mark.parametrize("marker", ["#leak-call-id", "#leak-glued-id", "#call-id"])
async def test_malformed_call_ids_are_renamed_kimi_style(upstream: UpstreamEngine, marker: str) -> None:
    before = upstream.repairs["tool_call_id"]
    events = await collect(upstream.generate(ask(f"weather? {marker}", tools=(WEATHER, TIME))))
    [call] = calls(events)
    assert call.id == "functions.get_weather:0" and call.name == "get_weather"
    assert upstream.repairs["tool_call_id"] == before + 1


async def test_a_renamed_id_maps_back_when_the_client_sends_it_in_history(
    upstream: UpstreamEngine, standin: StandinProcess
) -> None:
    [call] = calls(await collect(upstream.generate(ask("weather? #call-id", tools=(WEATHER,)))))
    history = (
        Message("user", "weather?"),
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", "sunny", tool_call_id=call.id),
    )
    await collect(upstream.generate(GenerationRequest("k", history, tools=(WEATHER,))))
    sent = standin.stats()["requests"][-1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == sent[2]["tool_call_id"] == "functions.get_weather:0"


@pytest.mark.parametrize("marker", ["#split-calls", "#merged-calls"])
async def test_calls_mis_split_in_one_turn_are_each_their_own_valid_call(
    upstream: UpstreamEngine, marker: str
) -> None:
    before = upstream.repairs["split_tool_calls"]
    events = await collect(upstream.generate(ask(f"two cities {marker}", tools=(WEATHER,))))
    got = calls(events)
    assert [json.loads(c.arguments) for c in got] == [{"city": "Paris"}, {"city": "Beijing"}]
    assert [c.id for c in got] == ["functions.get_weather:0", "functions.get_weather:1"]
    assert upstream.repairs["split_tool_calls"] == before + 1


async def test_moonshot_thinking_tool_loop_keeps_reasoning_content_on_every_tool_call_turn(
    moonshot: StandinProcess,
) -> None:
    """Moonshot answers 400 when a tool-call turn lacks reasoning_content (opencode issue 29690):
    the client's reasoning is sent back, and "" where it sent none."""
    engine = UpstreamEngine(config(moonshot.url, dialect="moonshot"))
    try:
        history: list[Message] = [Message("user", "weather in Paris, then Rome?")]
        for turn in range(3):
            events = await collect(
                engine.generate(GenerationRequest("k", tuple(history), tools=(WEATHER,), thinking="high"))
            )
            reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
            kept = reasoning if turn != 1 else ""  # turn 1: a client that drops it
            history += [
                Message("assistant", "", tool_calls=tuple(calls(events)), reasoning=kept),
                Message("tool", "sunny", tool_call_id=calls(events)[0].id),
            ]
        bodies = moonshot.stats()["requests"][-3:]
        for body in bodies:
            assert body["thinking"] == {"type": "enabled"}
            turns = [m for m in body["messages"] if m.get("tool_calls")]
            assert all("reasoning_content" in m for m in turns)
        last = [m for m in bodies[-1]["messages"] if m.get("tool_calls")]
        assert [m["reasoning_content"] for m in last] == ["The user asks; answer briefly.", ""]
    finally:
        await engine.aclose()


async def test_kept_reasoning_reaches_vllm_with_preserve_thinking(
    upstream: UpstreamEngine, standin: StandinProcess
) -> None:
    from dataclasses import replace

    request = follow_up("")
    await collect(upstream.generate(request))
    dropped = standin.stats()["requests"][-1]
    assert "reasoning" not in dropped["messages"][1]
    assert dropped["chat_template_kwargs"] == {"thinking": True}
    await collect(upstream.generate(replace(request, keep_reasoning=True)))
    kept = standin.stats()["requests"][-1]
    assert (
        kept["messages"][1]["reasoning"]
        == kept["messages"][1]["reasoning_content"]
        == ("I should call the tool.")
    )
    assert kept["chat_template_kwargs"] == {"thinking": True, "preserve_thinking": True}
