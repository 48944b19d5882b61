"""POST /v1/chat/completions through the official openai SDK, against a real server process."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import jsonschema
import pytest
from openai import AsyncOpenAI

from tests.protocols.openai.support import MODEL, PROMPT, kimi_cost, messages, real_engine_only, usage_rows
from tests.serverproc import ServerProcess


async def test_plain_completion(client: AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(
        model=MODEL, messages=messages(), max_completion_tokens=24, seed=7
    )
    assert reply.id.startswith("chatcmpl-")
    assert reply.object == "chat.completion"
    assert reply.model == MODEL  # the name the client asked for, echoed
    [choice] = reply.choices
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason in {"stop", "length"}
    usage = reply.usage
    assert usage is not None
    assert usage.prompt_tokens > 0 and 1 <= usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None  # a shared prompt prefix may be cached
    assert 0 <= (usage.prompt_tokens_details.cached_tokens or 0) <= usage.prompt_tokens
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0


async def test_every_alias_and_max_tokens(client: AsyncOpenAI) -> None:
    for name in ("moonshotai:kimi@2.6", "moonshotai-kimi-k2-6"):
        reply = await client.chat.completions.create(model=name, messages=messages(), max_tokens=4, seed=1)
        assert reply.model == name
        assert reply.usage is not None and reply.usage.completion_tokens <= 4


async def test_stream_with_usage_matches_unstreamed(client: AsyncOpenAI) -> None:
    args = {
        "model": MODEL,
        "messages": messages(),
        "max_completion_tokens": 24,
        "seed": 11,
        "temperature": 0.9,
    }
    plain = await client.chat.completions.create(**args)
    stream = await client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert {c.id for c in chunks} == {chunks[0].id}
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    *body, last = chunks
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in body)
    finishes = [c.choices[0].finish_reason for c in body if c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    text = "".join(c.choices[0].delta.content or "" for c in body)
    assert text == plain.choices[0].message.content
    assert plain.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (
        plain.usage.prompt_tokens,
        plain.usage.completion_tokens,
    )


async def test_stream_without_usage_has_no_usage_chunk(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages(), max_completion_tokens=8, seed=3, stream=True
    )
    chunks = [c async for c in stream]
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}


async def test_n_two_distinct_and_reproducible(client: AsyncOpenAI) -> None:
    args = {"model": MODEL, "messages": messages(), "max_completion_tokens": 12, "seed": 100, "n": 2}
    first = await client.chat.completions.create(**args)
    again = await client.chat.completions.create(**args)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1]
    assert texts[0] != texts[1]
    assert [c.message.content for c in again.choices] == texts


async def test_n_two_streamed_matches_unstreamed(client: AsyncOpenAI) -> None:
    args = {"model": MODEL, "messages": messages(), "max_completion_tokens": 12, "seed": 200, "n": 2}
    plain = await client.chat.completions.create(**args)
    stream = await client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True})
    texts = ["", ""]
    finishes: list[int] = []
    usage = None
    async for chunk in stream:
        if not chunk.choices:
            usage = chunk.usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes.append(choice.index)
    assert texts == [c.message.content for c in plain.choices]
    assert sorted(finishes) == [0, 1]
    assert usage is not None and plain.usage is not None
    assert usage.total_tokens == plain.usage.total_tokens


@real_engine_only
async def test_stop_sequence(client: AsyncOpenAI) -> None:
    args = {
        "model": MODEL,
        "messages": messages(),
        "max_completion_tokens": 24,
        "seed": 5,
        "temperature": 0.7,
    }
    free = await client.chat.completions.create(**args)
    text = free.choices[0].message.content or ""
    words = text.split()
    assert len(words) >= 4, text
    stop = " " + words[2]
    stopped = await client.chat.completions.create(**args, stop=[stop, "never-appears-0"])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(stop)]


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@real_engine_only
@pytest.mark.timeout(600)  # 20 constrained generations on a shared 2-core CPU
async def test_json_schema_output_on_twenty_seeds(client: AsyncOpenAI) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    replies = await asyncio.gather(
        *(
            client.chat.completions.create(
                model=MODEL,
                messages=messages("Describe a person as JSON with a name and an age."),
                response_format=fmt,  # type: ignore[arg-type]
                max_completion_tokens=48,
                seed=seed,
                n=4,
            )
            for seed in range(1000, 1020, 4)
        )
    )
    choices = [c for r in replies for c in r.choices]
    assert len(choices) == 20
    for choice in choices:
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content or ""), PERSON)


@real_engine_only
async def test_json_object_output(client: AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(
        model=MODEL,
        messages=messages("Give a JSON object with one key."),
        response_format={"type": "json_object"},
        max_completion_tokens=48,
        seed=9,
    )
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


async def test_usage_recorded_once_per_generation(client: AsyncOpenAI, server: ServerProcess) -> None:
    reply = await client.chat.completions.create(
        model=MODEL, messages=messages(), max_completion_tokens=12, seed=21, n=2
    )
    rows = usage_rows(server.data_dir, reply.id)
    assert len(rows) == 2
    assert {r["protocol"] for r in rows} == {"openai"}
    assert {r["model"] for r in rows} == {MODEL}
    assert reply.usage is not None
    assert sum(r["prompt_tokens"] for r in rows) == reply.usage.prompt_tokens
    assert sum(r["completion_tokens"] for r in rows) == reply.usage.completion_tokens
    for r in rows:
        expected = kimi_cost(r["prompt_tokens"], r["completion_tokens"], r["cached_tokens"])
        assert abs(r["cost_micros"] - expected * 1e6) <= 0.5  # integer micro-USD, rounded half up


async def test_streamed_usage_recorded(client: AsyncOpenAI, server: ServerProcess) -> None:
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages(), max_completion_tokens=8, seed=22, stream=True
    )
    ids = {c.id async for c in stream}
    [rows] = [usage_rows(server.data_dir, i) for i in ids]
    assert len(rows) == 1 and rows[0]["protocol"] == "openai"


def test_same_text_as_runware_text_inference(server: ServerProcess, api_key: str) -> None:
    headers = {"Authorization": f"Bearer {api_key}"}
    chat = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        headers=headers,
        json={
            "model": MODEL,
            "messages": messages(),
            "temperature": 0.7,
            "seed": 42,
            "max_completion_tokens": 24,
        },
        timeout=120,
    )
    task = {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "moonshotai:kimi@2.6",
        "messages": [{"role": "user", "content": PROMPT}],
        "settings": {"temperature": 0.7, "maxTokens": 24},
        "seed": 42,
    }
    runware = httpx.post(f"{server.base_url}/v1", headers=headers, json=[task], timeout=120)
    assert chat.status_code == 200, chat.text
    assert runware.status_code == 200, runware.text
    [item] = runware.json()["data"]
    assert chat.json()["choices"][0]["message"]["content"] == item["text"]
