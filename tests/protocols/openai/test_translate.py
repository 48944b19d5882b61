"""Wire → domain translation and error rendering, without a server."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from kimiserve.domain import capabilities
from kimiserve.domain.served import ServedModel
from kimiserve.domain.types import Constraint, Message, ToolCall, ToolChoice
from kimiserve.engines.base import Capabilities
from kimiserve.engines.fake import FakeEngine
from kimiserve.errors import (
    EngineError,
    InsufficientCredits,
    InvalidRequest,
    KimiserveError,
    NotFound,
    UnsupportedFeature,
)
from kimiserve.platform.prices import FREE
from kimiserve.protocols.openai import translate
from kimiserve.protocols.openai.errors import render

PLAIN = ServedModel(id="kimi-k2.6", aliases=(), engine=FakeEngine(), price=FREE, served_by="tiny")
CAPABLE = ServedModel(
    id="kimi-k2.6",
    aliases=(),
    engine=FakeEngine(
        capabilities=Capabilities(context_length=8192, thinking="native", tools="native", vision=True)
    ),
    price=FREE,
)


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "kimi-k2.6", "messages": [{"role": "user", "content": "hi"}], **fields}


def request(served: ServedModel = PLAIN, **fields: Any) -> Any:
    """The request as the front door passes it on: translated, then checked against `served`."""
    call = translate.to_call(translate.parse(body(**fields)), "chatcmpl-test")
    checked = replace(call.request, model=served.id)
    capabilities.check(served, checked, call.parameters, call.builtins)
    return checked


def test_defaults() -> None:
    req = request()
    assert req.model == "kimi-k2.6"
    assert req.messages == (Message(role="user", content="hi"),)
    assert req.sampling.temperature == 1.0 and req.sampling.top_p == 1.0 and req.sampling.top_k == 0
    assert req.sampling.max_tokens is None and req.sampling.stop == ()
    assert req.constraint is None and req.thinking == "none" and req.tools == ()


def test_sampling_fields() -> None:
    req = request(
        temperature=0.3,
        top_p=0.9,
        top_k=-1,
        min_p=0.05,
        frequency_penalty=0.5,
        presence_penalty=-0.5,
        repetition_penalty=1.1,
        max_tokens=10,
        max_completion_tokens=20,
        stop="END",
        ignore_eos=True,
        prompt_cache_key="conv-1",
    )
    s = req.sampling
    assert (s.temperature, s.top_p, s.top_k, s.min_p) == (0.3, 0.9, 0, 0.05)
    assert (s.frequency_penalty, s.presence_penalty, s.repetition_penalty) == (0.5, -0.5, 1.1)
    assert s.max_tokens == 20  # max_completion_tokens wins over the deprecated max_tokens
    assert s.stop == ("END",) and s.ignore_eos
    assert req.prompt_cache_key == "conv-1"


def test_roles_and_history() -> None:
    req = request(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "thinking...",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ]
    )
    system, user, assistant, tool = req.messages
    assert system == Message(role="system", content="Be brief.")
    assert user.content == "a\nb"
    assert assistant.content == "" and assistant.tool_calls[0].name == "f"
    assert assistant.reasoning == "thinking..."
    assert tool == Message(role="tool", content="42", tool_call_id="c1")
    assert not req.keep_reasoning  # kept only when asked (seed 004: thinking.keep "all")


def test_thinking_keep_all_keeps_reasoning_under_either_name() -> None:
    history = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b", "reasoning": "vLLM's name"},
        {"role": "user", "content": "c"},
    ]
    kept = request(CAPABLE, messages=history, thinking={"type": "enabled", "keep": "all"})
    assert kept.keep_reasoning and kept.messages[1].reasoning == "vLLM's name"
    assert not request(CAPABLE, messages=history, thinking={"type": "enabled"}).keep_reasoning


def test_response_formats() -> None:
    assert request(response_format={"type": "text"}).constraint is None
    assert request(response_format={"type": "json_object"}).constraint == Constraint(
        json_schema=translate.JSON_OBJECT_SCHEMA
    )
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    constraint = request(response_format=fmt).constraint
    assert constraint is not None and json.loads(constraint.json_schema or "") == schema
    with pytest.raises(InvalidRequest) as info:
        request(response_format={"type": "json_schema"})
    assert info.value.parameter == "response_format.json_schema"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"thinking": {"type": "enabled"}}, "thinking"),
        ({"thinking": {"keep": "all"}}, "thinking"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ],
)
def test_refused_on_a_plain_model(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(UnsupportedFeature) as info:
        request(**fields)
    assert info.value.parameter == param
    assert "tiny" in info.value.message  # the stand-in is named


def test_duplicate_tool_names_refused_naming_the_second() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(InvalidRequest) as info:
        request(CAPABLE, tools=[tool, {"type": "function", "function": {"name": "g"}}, tool])
    assert info.value.parameter == "tools[2].function.name"


def test_tool_call_streams_as_openai_does() -> None:
    call = ToolCall(id="functions.f:0", name="f", arguments='{"a": 1}')
    head, rest = translate.tool_call_deltas(call, 1)
    assert head == {
        "index": 1,
        "id": "functions.f:0",
        "type": "function",
        "function": {"name": "f", "arguments": ""},
    }
    assert rest == {"index": 1, "function": {"arguments": '{"a": 1}'}}


def test_logprobs_refused() -> None:
    with pytest.raises(UnsupportedFeature) as info:
        request(logprobs=True)
    assert info.value.parameter == "logprobs"


def test_video_part_named() -> None:
    content = [
        {"type": "text", "text": "x"},
        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AA"}},
    ]
    with pytest.raises(UnsupportedFeature) as info:
        request(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": content}])
    assert info.value.parameter == "messages[1].content[1]"


def test_capable_model_gets_thinking_tools_and_media() -> None:
    content = [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    ]
    req = request(
        CAPABLE,
        messages=[{"role": "user", "content": content}],
        thinking={"type": "enabled"},
        reasoning_effort="medium",
        tools=[{"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}],
        tool_choice={"type": "function", "function": {"name": "now"}},
    )
    assert req.thinking == "medium"
    assert req.images == ("https://example.com/a.png",)
    assert [t.name for t in req.tools] == ["now"]
    assert req.tool_choice == ToolChoice(mode="named", name="now")
    assert request(CAPABLE, thinking={"type": "enabled"}).thinking == "high"
    with pytest.raises(InvalidRequest) as info:
        request(CAPABLE, tool_choice="required")
    assert info.value.parameter == "tool_choice"
    with pytest.raises(InvalidRequest) as info:
        request(CAPABLE, thinking={"type": "disabled"}, reasoning_effort="high")
    assert info.value.parameter == "reasoning_effort"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages[0].content[0].type"),
        ({"tool_choice": {"type": "function"}}, "tool_choice.function"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        ({"seed": 2**64}, "seed"),
        ({"top_k": -2}, "top_k"),
        ({"model": None}, "model"),
    ],
)
def test_validation_params(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        request(**fields)
    assert info.value.parameter == param


def test_body_must_be_an_object() -> None:
    with pytest.raises(InvalidRequest):
        translate.parse([body()])


def test_error_rendering() -> None:
    status, out = render(InvalidRequest("bad", parameter="max_tokens"), "rid")
    assert status == 400
    assert out == {
        "error": {
            "message": "bad",
            "type": "invalid_request_error",
            "param": "max_completion_tokens",
            "code": "invalid_value",
        }
    }
    _, out = render(InvalidRequest("bad", parameter="max_tokens"), "rid", {"max_tokens": "max_tokens"})
    assert out["error"]["param"] == "max_tokens"
    status, out = render(NotFound("no", code="invalidModel", parameter="model"), "rid")
    assert (status, out["error"]["code"], out["error"]["param"]) == (404, "model_not_found", "model")
    status, out = render(InsufficientCredits("broke"), "rid")
    assert (status, out["error"]["type"]) == (402, "insufficient_quota")
    status, out = render(EngineError("engine died"), "rid-1")
    assert status == 500 and "rid-1" in out["error"]["message"] and out["error"]["type"] == "server_error"
    status, out = render(KimiserveError("x", code="contextLengthExceeded", status=400), "rid")
    assert out["error"]["code"] == "context_length_exceeded"


def test_unexpected_errors_are_500_never_400(caplog: pytest.LogCaptureFixture) -> None:
    status, out = render(ValueError("a bug"), "rid-2")
    assert status == 500
    assert out["error"]["type"] == "server_error" and "rid-2" in out["error"]["message"]
    assert "a bug" not in out["error"]["message"]
    assert "rid-2" in caplog.text
