"""Faults the real model cannot be asked for, on /v1/responses: a stream that dies after it began
(`response.failed` in-band, not charged beyond what was produced), the same failure unstreamed (a
500 in OpenAI's format), and a scripted parallel call turn. In-process, the scripted fake engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from kimiserve.domain.types import Finished, TextDelta, ToolCall, ToolCallEvent, Usage
from kimiserve.engines.base import Capabilities
from tests.inprocess import InProcess, serve_in_process
from tests.protocols.openai.support import MODEL
from tests.serverproc import create_key


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    data_dir = tmp_path_factory.mktemp("responses-faults")
    key = create_key(data_dir)
    with serve_in_process(data_dir, keepalive_s=0.2) as server:
        server.key = key
        server.engine.capabilities = Capabilities(context_length=4096, max_concurrency=64, tools="native")
        yield server


@pytest.fixture
async def oa(app_server: InProcess) -> AsyncIterator[AsyncOpenAI]:
    engine = app_server.engine
    engine.delay_s, engine.fail_after, engine.script = 0.0, None, None
    async with AsyncOpenAI(base_url=f"{app_server.base_url}/v1", api_key=app_server.key, max_retries=0) as c:
        yield c
    engine.delay_s, engine.fail_after, engine.script = 0.0, None, None


async def test_a_stream_dying_midway_ends_failed(app_server: InProcess, oa: AsyncOpenAI) -> None:
    app_server.engine.fail_after = 3
    stream = await oa.responses.create(model=MODEL, input="a b c d e", stream=True)
    events = [e async for e in stream]
    assert events[-1].type == "response.failed"
    failed = events[-1].response
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta")  # what came first
    assert [e.sequence_number for e in events] == list(range(len(events)))
    with pytest.raises(openai.NotFoundError):  # a failed response is not stored
        await oa.responses.retrieve(failed.id)
    assert await app_server.engine.all_closed()


async def test_the_same_failure_unstreamed_is_a_500(app_server: InProcess, oa: AsyncOpenAI) -> None:
    app_server.engine.fail_after = 3
    with pytest.raises(openai.InternalServerError) as failed:
        await oa.responses.create(model=MODEL, input="a b c d e")
    assert failed.value.status_code == 500
    assert failed.value.body["type"] == "server_error"  # type: ignore[index]


async def test_several_calls_in_one_turn_are_several_items(app_server: InProcess, oa: AsyncOpenAI) -> None:
    calls = [ToolCall("c1", "f", '{"x": 1}'), ToolCall("c2", "f", '{"x": 2}')]
    turn = [TextDelta("Both."), *(ToolCallEvent(c) for c in calls), Usage(5, 7), Finished("tool_calls")]
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
    app_server.engine.script = [list(turn)]
    reply = await oa.responses.create(model=MODEL, input="go", tools=tools)  # type: ignore[arg-type]
    assert [o.type for o in reply.output] == ["message", "function_call", "function_call"]
    assert [(o.call_id, o.arguments) for o in reply.output[1:]] == [("c1", '{"x": 1}'), ("c2", '{"x": 2}')]  # type: ignore[union-attr]
    app_server.engine.script = [list(turn)]
    async with oa.responses.stream(model=MODEL, input="go", tools=tools) as stream:  # type: ignore[arg-type]
        events = [e async for e in stream]
        final = await stream.get_final_response()
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [(e.output_index, e.item.type) for e in added] == [
        (0, "message"),
        (1, "function_call"),
        (2, "function_call"),
    ]
    streamed = [(o.call_id, o.name, o.arguments) for o in final.output[1:]]  # type: ignore[union-attr]
    assert streamed == [(o.call_id, o.name, o.arguments) for o in reply.output[1:]]  # type: ignore[union-attr]
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (5, 7)


async def test_a_client_leaving_an_unstreamed_response_cancels_it(app_server: InProcess) -> None:
    app_server.engine.delay_s = 0.05  # 400 words: 20 s, unless cancelled
    started = app_server.engine.started
    body = {"model": MODEL, "input": " ".join(f"w{i}" for i in range(400))}
    async with httpx.AsyncClient(base_url=app_server.base_url, timeout=0.5) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/v1/responses", json=body, headers={"Authorization": f"Bearer {app_server.key}"})
    assert app_server.engine.started == started + 1
    assert await app_server.engine.all_closed(timeout_s=3.0)  # cancelled, not run to its end
