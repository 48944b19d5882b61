"""Several tool calls in one turn on the real embedded model: `<tool_call>` blocks one per line,
each body under the tools' grammar, each its own `ToolCallEvent`; `parallel_tool_calls: false`
and a named choice hold a turn to one call."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import jsonschema  # type: ignore[import-untyped]
import pytest

from kimiserve.domain.types import Message, ToolCall, ToolCallEvent, ToolChoice
from kimiserve.engines.llamacpp import LlamaCppConfig, LlamaCppEngine, toolcalls
from tests.engines.test_tools import CLOCK, WEATHER, request, run

TWO_CITIES = "What is the weather in Paris and in London?"


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine(LlamaCppConfig(n_ctx=4096, max_sequences=4, prompt_chunk=256))
    yield engine
    engine.close()


@pytest.mark.parametrize("seed", [0, 1])
async def test_two_calls_in_one_turn_each_its_own_valid_event(engine: LlamaCppEngine, seed: int) -> None:
    turn = await run(engine, request(TWO_CITIES, choice=ToolChoice("required"), max_tokens=200, seed=seed))
    assert turn.finish == "tool_calls" and not turn.text
    assert [c.id for c in turn.calls] == ["functions.get_weather:0", "functions.get_weather:1"]
    schema = json.loads(WEATHER.parameters)
    arguments = [json.loads(c.arguments) for c in turn.calls]
    for a in arguments:
        jsonschema.validate(a, schema)
    assert [a["city"] for a in arguments] == ["Paris", "London"]
    # each call is its own event, emitted when its body closes (before Usage and Finished)
    kinds = [type(e).__name__ for e in turn.events]
    assert kinds[-4:] == ["ToolCallEvent", "ToolCallEvent", "Usage", "Finished"]


async def test_parallel_false_makes_at_most_one_call(engine: LlamaCppEngine) -> None:
    asked = request(TWO_CITIES, choice=ToolChoice("required"), max_tokens=200)
    turn = await run(engine, replace(asked, parallel_tool_calls=False))
    assert turn.finish == "tool_calls"
    assert [c.id for c in turn.calls] == ["functions.get_weather:0"]
    assert json.loads(turn.calls[0].arguments)["city"] == "Paris"


async def test_a_named_choice_calls_that_function_once(engine: LlamaCppEngine) -> None:
    turn = await run(
        engine, request(TWO_CITIES, tools=(CLOCK, WEATHER), choice=ToolChoice("named", "get_weather"))
    )
    assert turn.finish == "tool_calls" and [c.name for c in turn.calls] == ["get_weather"]


async def test_ids_count_on_from_the_calls_in_the_history(engine: LlamaCppEngine) -> None:
    earlier = ToolCall("call_a", "get_weather", '{"city":"Rome","unit":"c"}')
    history = (
        Message("user", "What is the weather in Rome?"),
        Message("assistant", "", tool_calls=(earlier,)),
        Message("tool", "Sunny.", tool_call_id="call_a"),
    )
    turn = await run(
        engine, request(TWO_CITIES, history=history, choice=ToolChoice("required"), max_tokens=200)
    )
    assert turn.calls and turn.calls[0].id == "functions.get_weather:1"
    assert [c.id for c in turn.calls] == [f"functions.get_weather:{1 + i}" for i in range(len(turn.calls))]


async def test_a_turn_cut_by_max_tokens_keeps_its_complete_calls(engine: LlamaCppEngine) -> None:
    # the first call (marker, body, `</tool_call>`: ~30 tokens) fits, the second body does not
    cut = await run(engine, request(TWO_CITIES, choice=ToolChoice("required"), max_tokens=36))
    assert cut.finish == "length" and cut.usage.completion_tokens == 36
    complete, *rest = cut.calls
    assert (complete.id, json.loads(complete.arguments)["city"]) == ("functions.get_weather:0", "Paris")
    # The second body, cut inside, is the partial call (issue 21): arguments as cut, not closed.
    assert len(rest) <= 1
    for partial in rest:
        assert partial.id == "functions.get_weather:1"
        with pytest.raises(ValueError):
            json.loads(partial.arguments)
    assert isinstance(cut.events[0], ToolCallEvent)


def test_a_history_turn_with_two_calls_renders_them_one_per_line() -> None:
    calls = (
        ToolCall("functions.get_weather:0", "get_weather", '{"city":"Paris","unit":"c"}'),
        ToolCall("functions.get_weather:1", "get_weather", '{"city":"London","unit":"f"}'),
    )
    req = request("Thanks", history=(Message("user", TWO_CITIES), Message("assistant", "", tool_calls=calls)))
    assistant = toolcalls.prompt_messages(req)[2]
    assert assistant.content == (
        '<tool_call>{"name":"get_weather","arguments":{"city":"Paris","unit":"c"}}</tool_call>\n'
        '<tool_call>{"name":"get_weather","arguments":{"city":"London","unit":"f"}}</tool_call>'
    )


def test_how_many_calls_a_turn_may_make() -> None:
    asked = request(TWO_CITIES)
    assert toolcalls.max_calls(asked) == toolcalls.MAX_CALLS
    assert toolcalls.max_calls(replace(asked, parallel_tool_calls=False)) == 1
    assert toolcalls.max_calls(replace(asked, tool_choice=ToolChoice("named", "get_weather"))) == 1
