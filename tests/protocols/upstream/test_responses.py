"""POST /v1/responses through the official openai SDK and the OpenAI Agents SDK, via a real
kimiserve in front of the stand-in vLLM (`tests/standin/`: it reasons unless told not to, and
`#call:NAME {json}` scripts a call of the client's own tool)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai import AsyncOpenAI

from tests.protocols.upstream.conftest import WEATHER_SCHEMA, Front

MODEL = "kimi-k2.6"
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": WEATHER_SCHEMA,
}
CALL = 'What is the weather in Paris? #call:get_weather {"city": "Paris"}'


@pytest.fixture
async def client(kimi: Front) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{kimi.server.base_url}/v1", api_key=kimi.key, max_retries=0) as c:
        yield c


async def test_reasoning_then_text(client: AsyncOpenAI, kimi: Front) -> None:
    reply = await client.responses.create(
        model=MODEL, input="hello there", reasoning={"effort": "low"}, max_output_tokens=200
    )
    assert [o.type for o in reply.output] == ["reasoning", "message"]
    reasoning = reply.output[0]
    assert reasoning.type == "reasoning" and reasoning.content is not None
    assert reasoning.content[0].text == "The user asks; answer briefly."
    assert reply.output_text == "hello there"
    assert reply.usage is not None and reply.usage.output_tokens_details.reasoning_tokens == 3
    upstream = kimi.last_upstream_body()
    assert upstream["max_tokens"] == 200  # max_output_tokens reached the engine


async def test_stream_with_reasoning_and_a_call(client: AsyncOpenAI) -> None:
    async with client.responses.stream(
        model=MODEL, input=CALL, tools=[WEATHER], reasoning={"effort": "low"}
    ) as stream:
        events = [e async for e in stream]
        final = await stream.get_final_response()
    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert reasoning == "The user asks; answer briefly."
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.function_call_arguments.delta")
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert json.loads(done.arguments) == {"city": "Paris"}
    assert [o.type for o in final.output] == ["reasoning", "function_call"]
    call = final.output[1]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id
    # the output_index of each added item is its place in the final output
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [e.output_index for e in added] == [0, 1]


async def test_function_call_round_trip_through_the_store(client: AsyncOpenAI, kimi: Front) -> None:
    first = await client.responses.create(model=MODEL, input=CALL, tools=[WEATHER], instructions="Be brief.")
    [call] = [o for o in first.output if o.type == "function_call"]
    second = await client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}],
        tools=[WEATHER],
    )
    assert second.output_text == "tool said: Sunny"
    messages = kimi.last_upstream_body()["messages"]
    # the stored turn came back: the user's message, the assistant's call, then the result;
    # the first response's instructions do not carry over (as OpenAI)
    roles = [m["role"] for m in messages]
    assert roles == ["user", "assistant", "tool"]
    [sent] = messages[1]["tool_calls"]  # its id as the engine adapter writes it for Kimi
    assert sent["function"] == {"name": "get_weather", "arguments": call.arguments}
    assert messages[2]["tool_call_id"] == sent["id"] and messages[2]["content"] == "Sunny"
    items = await client.responses.input_items.list(second.id)
    assert [i.type for i in items.data] == ["function_call_output"]


async def test_agents_sdk_runs_a_function_tool(kimi: Front) -> None:
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)
    ran: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        ran.append(city)
        return f"Sunny in {city}"

    async with AsyncOpenAI(base_url=f"{kimi.server.base_url}/v1", api_key=kimi.key, max_retries=0) as c:
        model = agents.OpenAIResponsesModel(model=MODEL, openai_client=c)
        agent = agents.Agent(name="weather", instructions="Use the tool.", tools=[get_weather], model=model)
        result = await agents.Runner.run(agent, CALL)
    assert ran == ["Paris"]
    assert result.final_output == "tool said: Sunny in Paris"
