"""Responses API items → the canonical request (no server): how each item type lands, and how
refusals name the item the client sent."""

from __future__ import annotations

from typing import Any

import pytest

from kimiserve.domain.types import Message, ToolCall
from kimiserve.errors import InvalidRequest, UnsupportedFeature
from kimiserve.protocols.responses import translate


def call(body: dict[str, Any], context: list[dict[str, Any]] | None = None) -> Any:
    return translate.to_call(translate.parse({"model": "kimi-k2.6", **body}), "resp_x", context or [])


def test_items_become_one_conversation() -> None:
    request = call(
        {
            "instructions": "Be brief.",
            "input": [
                {"role": "developer", "content": "Use metric units."},
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {
                    "type": "reasoning",
                    "id": "rs_1",
                    "summary": [],
                    "content": [{"type": "reasoning_text", "text": "Call it."}],
                },
                {
                    "type": "function_call",
                    "call_id": "c1",
                    "name": "get_weather",
                    "arguments": '{"city": "Paris"}',
                },
                {
                    "type": "function_call",
                    "call_id": "c2",
                    "name": "get_weather",
                    "arguments": '{"city": "Rome"}',
                },
                {"type": "function_call_output", "call_id": "c1", "output": "Sunny"},
                {
                    "type": "function_call_output",
                    "call_id": "c2",
                    "output": [{"type": "input_text", "text": "Rain"}],
                },
            ],
            "reasoning": {"effort": "minimal"},
            "max_output_tokens": 9,
        }
    ).request
    calls = (
        ToolCall("c1", "get_weather", '{"city": "Paris"}'),
        ToolCall("c2", "get_weather", '{"city": "Rome"}'),
    )
    assert request.messages == (
        Message(role="system", content="Be brief."),
        Message(role="system", content="Use metric units."),
        Message(role="user", content="Weather?"),
        Message(role="assistant", content="", tool_calls=calls, reasoning="Call it."),
        Message(role="tool", content="Sunny", tool_call_id="c1"),
        Message(role="tool", content="Rain", tool_call_id="c2"),
    )
    assert request.keep_reasoning and request.thinking == "low" and request.sampling.max_tokens == 9


def test_an_assistant_message_and_its_calls_are_one_turn() -> None:
    request = call(
        {
            "input": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            ]
        }
    ).request
    assert request.messages[1] == Message(
        role="assistant", content="Checking.", tool_calls=(ToolCall("c1", "f", "{}"),)
    )


def test_namespace_tools_are_flattened_and_named() -> None:
    body = {
        "input": "Hi",
        "tools": [
            {"type": "function", "name": "exec_command", "parameters": {"type": "object"}},
            {"type": "namespace", "name": "agents", "tools": [{"type": "function", "name": "spawn_agent"}]},
        ],
    }
    made = call(body)
    assert [t.name for t in made.request.tools] == ["exec_command", "spawn_agent"]
    assert made.parameters.tool_name(1) == "tools[1].tools[0].name"
    reply = translate.Reply.start("resp_x", translate.parse({"model": "kimi-k2.6", **body}))
    assert reply.namespaces == {"spawn_agent": "agents"}


def test_the_stored_conversation_comes_first_and_is_named_as_such() -> None:
    context = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Earlier"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Yes"}]},
    ]
    request = call({"input": "Now"}, context).request
    assert [m.content for m in request.messages] == ["Earlier", "Yes", "Now"]
    with pytest.raises(UnsupportedFeature) as refused:
        call({"input": "Now"}, [{"type": "item_reference", "id": "x"}])
    assert refused.value.parameter == "previous_response_id.type"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
        ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output"),
        ({"input": [{"content": "no role"}]}, "input[0].role"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].file_id",
        ),
        ({"input": "x", "tools": [{"type": "image_generation"}]}, "tools[0].type"),
        ({"input": "x", "tool_choice": {"type": "function"}}, "tool_choice.name"),
        ({"input": "x", "tool_choice": {"type": "allowed_tools", "tools": []}}, "tool_choice.type"),
        ({"input": [{"role": "system", "content": "only instructions"}]}, "input"),
        ({}, "input"),
    ],
)
def test_refusals_name_the_item(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        call(body)
    assert refused.value.parameter == param


def test_string_input_items_are_stored_as_parts() -> None:
    req = translate.parse(
        {
            "model": "kimi-k2.6",
            "input": [{"role": "assistant", "content": "Yes"}, {"role": "user", "content": "Go"}],
        }
    )
    items = translate.input_items(req, "resp_ab")
    assert [i["content"][0]["type"] for i in items] == ["output_text", "input_text"]
    assert [i["id"] for i in items] == ["in_ab00", "in_ab01"]


def test_images_are_user_media_named_by_their_part() -> None:
    made = call(
        {
            "instructions": "Look.",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is it?"},
                        {"type": "input_image", "image_url": "https://example.com/a.png"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                    ],
                }
            ],
        }
    )
    user = made.request.messages[1]
    assert user.content == "What is it?"
    assert user.images == ("https://example.com/a.png", "data:image/png;base64,AAAA")
    assert made.parameters.media_input(1, "image", 1) == "input[0].content[2]"
    assert made.parameters.media(1, "image", 0) == "input[0].content[1].image_url"
