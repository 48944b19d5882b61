"""/v1/models and the OpenAI error shapes, through the official openai SDK."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from tests.protocols.openai.support import MODEL, messages
from tests.serverproc import ServerProcess

KIMI_NAMES = {"kimi-k2.6", "moonshotai:kimi@2.6", "moonshotai-kimi-k2-6"}
SDK_UNKNOWN = {"thinking"}  # Kimi fields the SDK does not know: sent through extra_body


def _args(extra: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in extra.items() if k in SDK_UNKNOWN}
    known = {k: v for k, v in extra.items() if k not in SDK_UNKNOWN}
    return {"model": MODEL, "messages": messages(), **known, "extra_body": body}


async def test_models_list_names_every_alias(client: AsyncOpenAI) -> None:
    page = await client.models.list()
    entries = {m.id: m for m in page.data}
    assert set(entries) >= KIMI_NAMES
    kimi = entries["moonshotai:kimi@2.6"]
    assert kimi.object == "model" and kimi.owned_by == "moonshotai"
    extra: dict[str, Any] = kimi.model_extra or {}
    assert extra["root"] == "kimi-k2.6"
    assert extra["stand_in_for"]  # the local stand-in says so
    assert (set(entries) - KIMI_NAMES) == {extra["stand_in_for"]}  # the embedded model's own id


async def test_models_retrieve_by_alias(client: AsyncOpenAI) -> None:
    model = await client.models.retrieve("moonshotai:kimi@2.6")
    assert model.id == "moonshotai:kimi@2.6"
    with pytest.raises(openai.NotFoundError) as info:
        await client.models.retrieve("no-such-model")
    assert info.value.code == "model_not_found"


async def test_bad_key(server: ServerProcess) -> None:
    async with AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="ks-nope-nope", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as info:
            await bad.chat.completions.create(model=MODEL, messages=messages())
        assert info.value.code == "invalid_api_key"
        assert info.value.type == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            await bad.models.list()


def test_missing_key(server: ServerProcess) -> None:
    reply = httpx.post(
        f"{server.base_url}/v1/chat/completions", json={"model": MODEL, "messages": messages()}, timeout=30
    )
    assert reply.status_code == 401
    assert reply.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -2.1}, "frequency_penalty"),
        ({"n": 5}, "n"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"stop": [f"s{i}" for i in range(17)]}, "stop"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"thinking": {"type": "maybe"}}, "thinking.type"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "tool", "content": "42"}]}, "messages[0].tool_call_id"),
    ],
)
async def test_bad_parameter(client: AsyncOpenAI, extra: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(**_args(extra))
    assert info.value.param == param
    assert info.value.type == "invalid_request_error"
    assert info.value.code


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}],
                    }
                ]
            },
            "messages[0].content[0]",
        ),
    ],
)
async def test_unavailable_features_refused_by_name(
    client: AsyncOpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(**_args(extra))
    assert info.value.param == param
    assert info.value.code == "unsupported_parameter"


async def test_thinking_disabled_and_unknown_fields_accepted(client: AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "developer", "content": "Be brief."}, *messages()],
        max_completion_tokens=4,
        extra_body={"thinking": {"type": "disabled", "keep": "all"}, "no_such_field": {"x": 1}},
        reasoning_effort="none",
        user="someone",
    )
    assert reply.choices[0].message.content is not None


async def test_unknown_model(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="gpt-4o", messages=messages())
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"


async def test_image_part_names_the_part(client: AsyncOpenAI) -> None:
    content: list[Any] = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])
    assert info.value.param == "messages[0].content[1]"
    assert "image" in info.value.message


async def test_text_parts_accepted(client: AsyncOpenAI) -> None:
    content: list[Any] = [{"type": "text", "text": "Say"}, {"type": "text", "text": "hello."}]
    reply = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], max_completion_tokens=4
    )
    assert reply.choices[0].message.content is not None


def test_body_not_json(server: ServerProcess, api_key: str) -> None:
    reply = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert reply.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_context_length_error_speaks_openai_names(client: AsyncOpenAI, field: str) -> None:
    """Issue 21: the message said "maxTokens (…)" (Runware's name) while param said max_tokens."""
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(**_args({field: 10_000_000}))
    assert info.value.code == "context_length_exceeded"
    assert info.value.param == field
    assert "10000000 output tokens" in info.value.message
    for runware_name in ("maxTokens", "numberResults", "settings."):
        assert runware_name not in info.value.message
