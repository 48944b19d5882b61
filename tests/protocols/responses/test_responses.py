"""POST /v1/responses (and the stored responses' routes) through the official openai SDK, against
a real server process on the embedded model."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.responses import Response

from tests.protocols.openai.support import MODEL, real_engine_only, usage_rows
from tests.serverproc import ServerProcess

SCHEMA: Any = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": SCHEMA,
}


async def test_create_with_a_string_input(client: AsyncOpenAI, server: ServerProcess) -> None:
    reply = await client.responses.create(
        model=MODEL, input="Write one sentence about the sea.", max_output_tokens=24, store=False
    )
    assert reply.id.startswith("resp_") and reply.object == "response"
    assert reply.model == MODEL and reply.status in {"completed", "incomplete"}
    assert reply.output_text.strip()
    [message] = reply.output
    assert message.type == "message" and message.role == "assistant"
    usage = reply.usage
    assert usage is not None and usage.input_tokens > 0 and 1 <= usage.output_tokens <= 24
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert 0 <= usage.input_tokens_details.cached_tokens <= usage.input_tokens
    if reply.status == "incomplete":
        assert reply.incomplete_details is not None
        assert reply.incomplete_details.reason == "max_output_tokens"
    # usage recorded under the response id, protocol "responses"
    [row] = usage_rows(server.data_dir, reply.id)
    assert row["protocol"] == "responses"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.input_tokens, usage.output_tokens)
    # store: false stores nothing
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(reply.id)


async def test_the_raw_body_is_the_sdk_response_type(server: ServerProcess, api_key: str) -> None:
    body = {
        "model": MODEL,
        "instructions": "Answer in one word.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]}],
        "max_output_tokens": 8,
        "metadata": {"k": "v"},
    }
    async with httpx.AsyncClient(base_url=server.base_url, timeout=300) as http:
        raw = (
            await http.post("/v1/responses", json=body, headers={"Authorization": f"Bearer {api_key}"})
        ).json()
    parsed = Response.model_validate(raw)  # every required field of the SDK's type is there
    assert parsed.instructions == "Answer in one word." and parsed.metadata == {"k": "v"}
    assert parsed.max_output_tokens == 8 and parsed.store is True
    assert raw["usage"]["input_tokens_details"]["cached_tokens"] >= 0


async def test_stream_events_in_order(client: AsyncOpenAI) -> None:
    async with client.responses.stream(
        model=MODEL, input="Say hello.", max_output_tokens=16, store=False
    ) as stream:
        events = [e async for e in stream]
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    # cut by max_output_tokens, the stream ends `response.incomplete` (the SDK's
    # get_final_response() wants `response.completed`): the last event's response either way
    last = events[-1]
    assert last.type in {"response.completed", "response.incomplete"}
    final = last.response
    assert [e.sequence_number for e in events] == list(range(len(events)))
    order = [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert [k for k in kinds if k in order] == [order[0], order[1]] + [order[2]] * kinds.count(
        order[2]
    ) + order[3:]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas and final.output_text == deltas
    assert final.usage is not None and final.usage.output_tokens >= 1


@real_engine_only
async def test_function_call_round_trip_with_previous_response_id(client: AsyncOpenAI) -> None:
    first = await client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,  # one call to answer
        max_output_tokens=60,
    )
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id
    jsonschema.validate(json.loads(calls[0].arguments), SCHEMA)
    second = await client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 21 C."}],
        tools=[WEATHER],
        max_output_tokens=40,
    )
    assert second.previous_response_id == first.id
    assert second.output_text.strip()
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # the earlier turn was prepended
    # the same round trip without the store: the client sends the items back itself
    third = await client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "type": "function_call",
                "call_id": calls[0].call_id,
                "name": "get_weather",
                "arguments": calls[0].arguments,
            },
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 21 C."},
        ],
        tools=[WEATHER],
        max_output_tokens=40,
        store=False,
    )
    assert third.output_text.strip()


async def test_retrieve_list_inputs_delete_and_other_accounts(
    client: AsyncOpenAI, other_client: AsyncOpenAI
) -> None:
    made = await client.responses.create(model=MODEL, input="Say yes.", max_output_tokens=4)
    got = await client.responses.retrieve(made.id)
    assert got.id == made.id and got.output_text == made.output_text and got.usage == made.usage
    items = await client.responses.input_items.list(made.id)
    assert [i.type for i in items.data] == ["message"]
    assert items.data[0].content[0].text == "Say yes."  # type: ignore[union-attr]
    for action in (other_client.responses.retrieve, other_client.responses.delete):
        with pytest.raises(openai.NotFoundError):
            await action(made.id)
    with pytest.raises(openai.NotFoundError) as refused:
        await other_client.responses.create(model=MODEL, input="Go on.", previous_response_id=made.id)
    assert refused.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert (await client.responses.retrieve(made.id)).id == made.id  # untouched by the other account
    await client.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.delete(made.id)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[0].type"),
        ({"tools": [{"type": "mcp", "server_label": "x"}]}, "tools[0].type"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice.type"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
        ),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"background": True}, "background"),
    ],
)
async def test_refusals_name_the_param(client: AsyncOpenAI, body: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(**{"model": MODEL, "input": "Hi.", **body})
    assert refused.value.status_code == 400
    assert refused.value.body["param"] == param  # type: ignore[index]


@real_engine_only
async def test_json_schema_format(client: AsyncOpenAI) -> None:
    reply = await client.responses.create(
        model=MODEL,
        input="Name a city in France as JSON.",
        text={"format": {"type": "json_schema", "name": "city", "schema": SCHEMA, "strict": True}},
        max_output_tokens=40,
        store=False,
    )
    jsonschema.validate(json.loads(reply.output_text), SCHEMA)
