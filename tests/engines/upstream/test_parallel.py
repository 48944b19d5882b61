"""Several tool calls in one turn through UpstreamEngine, against the stand-in vLLM (`#parallel`:
two calls, each under its own `index`), and `parallel_tool_calls: false` holding a turn to one."""

from __future__ import annotations

import json

from kimiserve.domain.types import Finished, ToolCall, ToolCallEvent, ToolChoice, ToolSpec
from kimiserve.engines.openai_compat import UpstreamEngine
from kimiserve.engines.openai_compat.wire import build_body
from tests.engines.upstream.conftest import WEATHER, ask, collect, config
from tests.standin.process import StandinProcess

CITY = '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}'
TIME = ToolSpec("get_time", "The local time in a city.", CITY)
BEIJING_ONLY = ToolSpec(
    "get_time",
    "The local time in Beijing.",
    '{"type": "object", "properties": {"city": {"enum": ["Beijing"]}}, "required": ["city"]}',
)


def calls_of(events: list[object]) -> list[ToolCall]:
    return [e.call for e in events if isinstance(e, ToolCallEvent)]


async def test_two_calls_in_one_turn_pass_through_in_order(
    upstream: UpstreamEngine, standin: StandinProcess
) -> None:
    events = await collect(upstream.generate(ask("weather and time? #parallel", tools=(WEATHER, TIME))))
    assert calls_of(events) == [
        ToolCall("functions.get_weather:0", "get_weather", '{"city": "Beijing"}'),
        ToolCall("functions.get_time:1", "get_time", '{"city": "Shanghai"}'),
    ]
    assert events[-1] == Finished("tool_calls")
    assert standin.stats()["requests"][-1]["parallel_tool_calls"] is True
    assert upstream.repairs["extra_tool_calls"] == 0


async def test_parallel_false_keeps_the_first_call_and_counts_the_rest(
    upstream: UpstreamEngine, standin: StandinProcess
) -> None:
    request = ask("weather and time? #parallel", tools=(WEATHER, TIME), parallel_tool_calls=False)
    events = await collect(upstream.generate(request))
    # The stand-in ignores the field (as an upstream may): kimiserve keeps the first call.
    assert standin.stats()["requests"][-1]["parallel_tool_calls"] is False
    assert calls_of(events) == [ToolCall("functions.get_weather:0", "get_weather", '{"city": "Beijing"}')]
    assert events[-1] == Finished("tool_calls")
    assert upstream.repairs["extra_tool_calls"] == 1


async def test_a_named_tool_choice_keeps_one_call(upstream: UpstreamEngine) -> None:
    request = ask("weather? #parallel", tools=(WEATHER,), tool_choice=ToolChoice("named", "get_weather"))
    events = await collect(upstream.generate(request))
    assert [c.name for c in calls_of(events)] == ["get_weather"]


async def test_each_call_is_validated_against_its_own_schema(
    upstream: UpstreamEngine, standin: StandinProcess
) -> None:
    before = len(standin.stats()["requests"])
    asked = ask("weather and time? #parallel", tools=(WEATHER, BEIJING_ONLY))
    events = await collect(upstream.generate(asked))
    bodies = standin.stats()["requests"][before:]
    assert len(bodies) == 2  # the turn, then a re-ask about the one invalid call
    reask = bodies[1]["messages"]
    assert [c["function"]["name"] for c in reask[-2]["tool_calls"]] == ["get_time"]
    assert reask[-1]["role"] == "tool" and "get_time" in reask[-1]["content"]
    calls = calls_of(events)
    # the valid first call stands; the re-ask's call (the stand-in answers with its first tool) follows
    assert calls[0] == ToolCall("functions.get_weather:0", "get_weather", '{"city": "Beijing"}')
    assert len(calls) == 2 and json.loads(calls[1].arguments) == {"city": "Beijing"}


def test_parallel_tool_calls_reaches_vllm_sglang_and_openai_servers_not_moonshot() -> None:
    for dialect in ("vllm", "sglang", "openai"):
        body, _ = build_body(ask("hi", tools=(WEATHER,)), config("http://x/v1", dialect=dialect))
        assert body["parallel_tool_calls"] is True
        body, _ = build_body(
            ask("hi", tools=(WEATHER,), parallel_tool_calls=False), config("http://x/v1", dialect=dialect)
        )
        assert body["parallel_tool_calls"] is False
    body, _ = build_body(ask("hi", tools=(WEATHER,)), config("http://x/v1", dialect="moonshot"))
    assert "parallel_tool_calls" not in body
    body, _ = build_body(ask("hi"), config("http://x/v1"))
    assert "parallel_tool_calls" not in body  # no tools, nothing to say
