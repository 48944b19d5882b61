"""UpstreamEngine against the stand-in vLLM process: the request it sends, the events it reads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

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
from kimiserve.engines.openai_compat.wire import build_body
from kimiserve.errors import EngineError, InvalidRequest, UnsupportedFeature
from tests.engines.upstream.conftest import KIMI, WEATHER, ask, collect, config
from tests.standin.process import StandinProcess


def last_body(standin: StandinProcess) -> dict[str, object]:
    body: dict[str, object] = standin.stats()["requests"][-1]
    return body


async def test_thinking_on_and_off_reach_vllm_as_chat_template_kwargs(
    upstream: UpstreamEngine, standin: StandinProcess
) -> None:
    on = await collect(upstream.generate(ask("hello there", thinking="high")))
    assert last_body(standin)["chat_template_kwargs"] == {"thinking": True}
    assert "".join(e.text for e in on if isinstance(e, ReasoningDelta)) == "The user asks; answer briefly."
    off = await collect(upstream.generate(ask("hello there", thinking="none")))
    assert last_body(standin)["chat_template_kwargs"] == {"thinking": False}
    assert not any(isinstance(e, ReasoningDelta) for e in off)
    assert "".join(e.text for e in off if isinstance(e, TextDelta)) == "hello there"
    assert off[-1] == Finished("stop")


def test_moonshot_takes_thinking_as_its_own_field() -> None:
    body, _ = build_body(ask("hi", thinking="low"), config("http://x/v1", dialect="moonshot"))
    assert body["thinking"] == {"type": "enabled"} and "chat_template_kwargs" not in body
    body, _ = build_body(ask("hi"), config("http://x/v1", dialect="moonshot"))
    assert body["thinking"] == {"type": "disabled"} and "cache_salt" not in body
    assert "temperature" not in body and "top_p" not in body  # locked by Moonshot's API


async def test_body_is_streamed_with_usage_and_carries_sampling_and_cache_fields(
    upstream: UpstreamEngine, standin: StandinProcess
) -> None:
    from kimiserve.domain.types import Constraint, Sampling

    request = ask(
        "hi",
        sampling=Sampling(temperature=0.6, top_p=0.95, seed=7, max_tokens=33, stop=("END",), top_k=20),
        constraint=Constraint(json_schema='{"type": "object"}'),
        prompt_cache_key="conv-1",
        cache_scope="acct-a",
    )
    await collect(upstream.generate(request))
    body = last_body(standin)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["temperature"], body["top_p"], body["seed"], body["max_tokens"]) == (0.6, 0.95, 7, 33)
    assert body["stop"] == ["END"] and body["top_k"] == 20 and body["model"] == KIMI
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": {"type": "object"}},
    }
    assert body["prompt_cache_key"] == "conv-1" and body["cache_salt"] == "acct-a"


async def test_usage_reports_cached_and_reasoning_tokens_per_cache_scope(upstream: UpstreamEngine) -> None:
    system = Message("system", "You are a careful assistant with a long shared prefix")

    def request(scope: str) -> GenerationRequest:
        return GenerationRequest("k", (system, Message("user", "hi")), thinking="high", cache_scope=scope)

    first = [e for e in await collect(upstream.generate(request("acct-1"))) if isinstance(e, Usage)]
    again = [e for e in await collect(upstream.generate(request("acct-1"))) if isinstance(e, Usage)]
    other = [e for e in await collect(upstream.generate(request("acct-2"))) if isinstance(e, Usage)]
    assert first[0].cached_tokens == 0 and first[0].reasoning_tokens == 3
    assert again[0].cached_tokens == 11  # the system message (10 words + 1), cached under the same salt
    assert other[0].cached_tokens == 0  # another account's salt: no hit


async def test_reasoning_content_is_read_like_reasoning() -> None:
    proc = StandinProcess("sglang-like", reasoning_field="reasoning_content").start()
    engine = UpstreamEngine(config(proc.url, dialect="sglang"))
    try:
        events = await collect(engine.generate(ask("ok", thinking="medium")))
        assert [e.text for e in events if isinstance(e, ReasoningDelta)] == [
            "The user",
            " asks;",
            " answer briefly.",
        ]
    finally:
        await engine.aclose()
        proc.stop()


async def test_tool_call_ids_are_normalised_upstream_and_mapped_back(
    upstream: UpstreamEngine, standin: StandinProcess
) -> None:
    history = (
        Message("user", "weather in Paris?"),
        Message("assistant", "", tool_calls=(ToolCall("call_abc", "get_weather", '{"city": "Paris"}'),)),
        Message("tool", "sunny", tool_call_id="call_abc"),
        Message("user", "and Beijing?"),
    )
    events = await collect(upstream.generate(GenerationRequest("k", history, tools=(WEATHER,))))
    sent = last_body(standin)["messages"]
    assert isinstance(sent, list)
    assert sent[1]["tool_calls"][0]["id"] == "functions.get_weather:0"
    assert sent[2]["tool_call_id"] == "functions.get_weather:0"
    calls = [e.call for e in events if isinstance(e, ToolCallEvent)]
    assert calls == [ToolCall("functions.get_weather:1", "get_weather", '{"city": "Beijing"}')]
    assert events[-1] == Finished("tool_calls")


async def test_invalid_tool_arguments_are_reasked_once(
    upstream: UpstreamEngine, standin: StandinProcess
) -> None:
    before = len(standin.stats()["requests"])
    events = await collect(upstream.generate(ask("weather? #badtool", tools=(WEATHER,))))
    calls = [e.call for e in events if isinstance(e, ToolCallEvent)]
    assert len(calls) == 1 and json.loads(calls[0].arguments) == {"city": "Beijing"}
    bodies = standin.stats()["requests"][before:]
    assert len(bodies) == 2  # the call, then one re-ask telling the model what was wrong
    reask = bodies[1]["messages"][-1]
    assert (
        reask["role"] == "tool" and "city" in reask["content"] and "not of type 'string'" in reask["content"]
    )


async def test_a_call_invalid_twice_is_a_clear_error_never_invalid_json(upstream: UpstreamEngine) -> None:
    delivered = []
    with pytest.raises(EngineError) as caught:
        async for event in upstream.generate(ask("weather? #badtool-always", tools=(WEATHER,))):
            delivered.append(event)
    assert caught.value.code == "invalidToolCall" and "get_weather" in caught.value.message
    assert not any(isinstance(e, ToolCallEvent) for e in delivered)


async def test_upstream_400_names_the_parameter_it_named(upstream: UpstreamEngine) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await collect(upstream.generate(ask("#error400")))
    assert caught.value.parameter == "temperature" and "temperature must be in" in caught.value.message


async def test_upstream_500_is_service_unavailable(upstream: UpstreamEngine) -> None:
    with pytest.raises(EngineError.__base__) as caught:  # type: ignore[misc]
        await collect(upstream.generate(ask("#error500")))
    assert caught.value.code == "serviceUnavailable" and caught.value.status == 503


async def test_refused_connection_and_timeout_have_their_codes(standin: StandinProcess) -> None:
    from tests.serverproc import free_port

    refused = UpstreamEngine(config(f"http://127.0.0.1:{free_port()}/v1"))
    slow = UpstreamEngine(config(standin.url, read_timeout_s=0.01))
    try:
        with pytest.raises(Exception) as caught:
            await collect(refused.generate(ask("hi")))
        assert getattr(caught.value, "code", None) == "serviceUnavailable"
        with pytest.raises(EngineError) as timed_out:
            await collect(slow.generate(ask("one two three four #slow")))
        assert timed_out.value.code == "timeoutProvider"
    finally:
        await refused.aclose()
        await slow.aclose()


async def test_no_images_unless_configured(upstream: UpstreamEngine) -> None:
    with pytest.raises(UnsupportedFeature) as caught:
        await upstream.check(ask("look", images=("data:image/png;base64,AA==",)))
    assert caught.value.parameter == "images"
    vision = UpstreamEngine(config("http://x/v1", vision=True))
    assert vision.capabilities.vision and await vision.check(ask("look", images=("x",))) is None
    await vision.aclose()


async def test_closing_the_generator_cancels_the_upstream_request(
    upstream: UpstreamEngine, standin: StandinProcess
) -> None:
    before = standin.stats()["cancelled"]
    words = " ".join(f"w{i}" for i in range(100))
    async with contextlib.aclosing(upstream.generate(ask(f"{words} #slow"))) as events:
        async for event in events:
            if isinstance(event, TextDelta):
                break
    deadline = time.monotonic() + 5
    while standin.stats()["cancelled"] == before:
        assert time.monotonic() < deadline, "the upstream never saw the request end"
        await asyncio.sleep(0.05)  # the socket closes on the event loop


async def test_an_upstream_that_dies_mid_stream_ends_it_promptly_with_an_error() -> None:
    proc = StandinProcess("doomed").start()
    engine = UpstreamEngine(config(proc.url))
    delivered: list[str] = []
    started = time.monotonic()
    try:
        with pytest.raises(EngineError) as caught:
            async for event in engine.generate(ask("some words then #die")):
                if isinstance(event, TextDelta):
                    delivered.append(event.text)
        assert time.monotonic() - started < 5
        assert "".join(delivered) == "some words then"
        assert caught.value.status == 502 and "closed the stream" in caught.value.message
    finally:
        await engine.aclose()
        proc.stop()


async def test_a_call_that_breaks_a_format_is_reasked_then_refused(upstream: UpstreamEngine) -> None:
    """The stand-in calls with `{"city": "Beijing"}`: valid as a string, not as a `date`."""
    dated = ToolSpec(
        "get_weather",
        "The weather on a day.",
        json.dumps(
            {
                "type": "object",
                "properties": {"city": {"type": "string", "format": "date"}},
                "required": ["city"],
            }
        ),
    )
    with pytest.raises(EngineError) as caught:
        await collect(upstream.generate(ask("weather?", tools=(dated,))))
    assert caught.value.code == "invalidToolCall"
    assert "'Beijing' is not a 'date'" in caught.value.message and "city" in caught.value.message
