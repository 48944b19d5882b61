"""Constrained output and forced calls cut by max_tokens (issue 21), through the openai SDK,
LangChain and raw HTTP against the real server.

The rule (`engines/llamacpp/jsonclose.py`): JSON cut by max_tokens is closed only into a value
that validates against the schema and invents no key, otherwise returned as cut; a tool call is
returned with its arguments as cut. finish_reason is `length` either way, as OpenAI's.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest
from openai import AsyncOpenAI

from tests.protocols.openai.support import MODEL, real_engine_only
from tests.serverproc import ServerProcess

pytestmark = real_engine_only

USER: Any = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "email": {"type": "string"}},
    "required": ["name", "age", "email"],
    "additionalProperties": False,
}
ASK: Any = [{"role": "user", "content": "Describe a user of our website as JSON."}]
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 24}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
WEATHER_ASK: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


def valid_or_cut(text: str, schema: Any) -> bool:
    """True when closed into a valid value, False when returned as cut (it does not parse)."""
    try:
        value = json.loads(text)
    except ValueError:
        return False
    jsonschema.validate(value, schema)
    return True


@pytest.mark.parametrize("max_tokens", [5, 9])
async def test_json_schema_cut_is_never_an_invented_object(client: AsyncOpenAI, max_tokens: int) -> None:
    reply = await client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        max_tokens=max_tokens,
        seed=max_tokens,
        response_format={"type": "json_schema", "json_schema": {"name": "user", "schema": USER}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    text = choice.message.content or ""
    assert text.startswith("{") and '"":' not in text, text
    assert not valid_or_cut(text, USER)  # three required keys do not fit: the raw cut
    assert reply.usage is not None and reply.usage.completion_tokens == max_tokens


async def test_json_object_cut_parses_or_is_the_raw_cut(client: AsyncOpenAI) -> None:
    """instructor's JSON mode: `json_object` cut by max_tokens (issue 20)."""
    for seed in range(3):
        reply = await client.chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=12, seed=seed, response_format={"type": "json_object"}
        )
        choice = reply.choices[0]
        text = choice.message.content or ""
        if choice.finish_reason == "length" and valid_or_cut(text, {"type": "object"}):
            assert not text.endswith('"":0}'), text
        elif choice.finish_reason != "length":
            assert valid_or_cut(text, {"type": "object"}), text


@pytest.mark.parametrize("tool_choice", ["required", "named"])
async def test_forced_call_cut_is_the_partial_call(client: AsyncOpenAI, tool_choice: str) -> None:
    named: Any = {"type": "function", "function": {"name": "get_weather"}}
    choice_arg: Any = tool_choice if tool_choice == "required" else named
    reply = await client.chat.completions.create(
        model=MODEL, messages=WEATHER_ASK, tools=[WEATHER], tool_choice=choice_arg, max_tokens=12
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert not choice.message.content
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert call.function.arguments == "" or call.function.arguments.startswith("{")


def test_forced_call_cut_streams_the_partial_call(server: ServerProcess, api_key: str) -> None:
    body = {
        "model": MODEL,
        "messages": WEATHER_ASK,
        "tools": [WEATHER],
        "tool_choice": "required",
        "max_tokens": 12,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {api_key}"}
    names, arguments, finishes = [], "", []
    with httpx.stream(
        "POST", f"{server.base_url}/v1/chat/completions", json=body, headers=headers, timeout=120
    ) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:])["choices"]:
                for delta in choice["delta"].get("tool_calls") or []:
                    function = delta.get("function") or {}
                    if function.get("name"):
                        names.append(function["name"])
                    arguments += function.get("arguments") or ""
                if choice.get("finish_reason"):
                    finishes.append(choice["finish_reason"])
    assert names == ["get_weather"] and finishes == ["length"]
    with pytest.raises(ValueError):
        json.loads(arguments)  # as cut: not closed


def test_langchain_structured_output_does_not_silently_return_none(
    server: ServerProcess, api_key: str
) -> None:
    """`with_structured_output(method="function_calling")` on a cut call: LangChain raises (the
    arguments do not parse), where an empty turn made it return None."""
    langchain_openai = pytest.importorskip("langchain_openai")
    from pydantic import BaseModel, Field, ValidationError

    class Weather(BaseModel):
        """The weather in a city."""

        city: str = Field(max_length=24)

    chat = langchain_openai.ChatOpenAI(
        model=MODEL, base_url=f"{server.base_url}/v1", api_key=api_key, max_tokens=12, max_retries=0
    )
    structured = chat.with_structured_output(Weather, method="function_calling")
    from langchain_core.exceptions import OutputParserException

    with pytest.raises((OutputParserException, ValidationError)):
        structured.invoke("What is the weather in Paris?")
    raw = chat.with_structured_output(Weather, method="function_calling", include_raw=True).invoke(
        "What is the weather in Paris?"
    )
    assert raw["parsed"] is None and raw["parsing_error"] is not None
    message = raw["raw"]
    assert message.response_metadata["finish_reason"] == "length"
    assert [c["name"] for c in message.invalid_tool_calls + message.tool_calls] == ["Weather"]
