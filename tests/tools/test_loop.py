"""The built-in tools' loop in the pipeline, through the real HTTP server and the official SDKs,
with a scripted engine (the fake replays one list of events per round) so each round is known.

The search tool is the real local index (documents added before the server starts) and the
codeInterpreter the real bubblewrap sandbox, unless a test swaps in a tool to make a fault.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from kimiserve.domain.types import TextDelta, ToolCall, ToolCallEvent
from kimiserve.engines.base import Capabilities
from kimiserve.engines.fake import prompt_tokens
from kimiserve.tools.builtin import SearchTool, ToolOutput, ToolRegistry
from kimiserve.tools.errors import ToolFailed
from kimiserve.tools.search import INDEX_FILE, LocalIndex, SearchHit
from tests.inprocess import InProcess, serve_in_process
from tests.platform.support import AdminClient, assert_ledger_consistent
from tests.protocols.runware.wire import connected_sdk
from tests.serverproc import create_key

pytestmark = pytest.mark.timeout(60)
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")

MODEL = "kimi-k2.6"
OTTERS = "Sea otters hold hands while they sleep so that they do not drift apart."
OTTERS_URL = "https://example.org/otters"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def call(name: str, arguments: Any, call_id: str = "call_1") -> ToolCallEvent:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ToolCallEvent(ToolCall(call_id, name, text))


def search(query: str = "otters sleep", call_id: str = "call_1") -> ToolCallEvent:
    return call("search", {"query": query}, call_id)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    data_dir: Path = tmp_path_factory.mktemp("loop")
    LocalIndex(data_dir / INDEX_FILE).add_text(f"Otters\n\n{OTTERS}", url=OTTERS_URL, title="Otters")
    key = create_key(data_dir, "default", "admin", "--scopes", "all")
    with serve_in_process(data_dir, code_timeout_s=10.0) as running:
        running.key = key
        running.engine.capabilities = Capabilities(
            context_length=4096, max_concurrency=64, tools="constrained"
        )
        yield running


@pytest.fixture
async def admin(server: InProcess) -> AsyncIterator[AdminClient]:
    pipeline = server.services.admissions
    tools, rounds = pipeline.tools, pipeline.max_tool_rounds
    client = AdminClient(server, server.key)
    yield client
    await client.aclose()
    server.engine.script, server.engine.delay_s = None, 0.0
    server.engine.requests.clear()
    pipeline.tools, pipeline.max_tool_rounds = tools, rounds


def task(tools: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": MODEL,
        "messages": [{"role": "user", "content": "How do sea otters sleep?"}],
        "tools": tools,
        "includeUsage": True,
        "includeCost": True,
        "settings": {"maxTokens": 64},
        **fields,
    }


async def post(server: InProcess, key: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(
            f"{server.base_url}/v1", json=[body], headers={"Authorization": f"Bearer {key}"}
        )


async def run(server: InProcess, key: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = await post(server, key, body)
    assert reply.status_code == 200, reply.text
    [item] = reply.json()["data"]
    return dict(item)


# ---- the loop -----------------------------------------------------------------------------


async def test_one_round_runs_search_and_answers_with_citations(
    server: InProcess, admin: AdminClient
) -> None:
    key = await admin.account_with_key("one-round", micros=10_000_000)
    server.engine.script = [[search()], [TextDelta("They hold hands.")]]
    item = await run(server, key, task([{"type": "search"}]))
    assert item["text"] == "They hold hands." and item["finishReason"] == "stop"
    [run_] = item["builtinTools"]
    assert run_["id"] == "call_1" and run_["name"] == "search" and run_["input"] == {"query": "otters sleep"}
    assert run_["isError"] is False
    assert run_["result"]["results"][0]["url"] == OTTERS_URL
    assert item["citations"] == [{"title": "Otters", "url": OTTERS_URL}]
    assert "tools" not in item  # a built-in call is not the client's to answer
    first, second = server.engine.requests
    [spec] = first.tools
    assert spec.name == "search" and json.loads(spec.parameters)["required"] == ["query"]
    assistant, tool = second.messages[-2:]
    assert assistant.role == "assistant" and assistant.tool_calls == (
        ToolCall("call_1", "search", '{"query": "otters sleep"}'),
    )
    assert tool.role == "tool" and tool.tool_call_id == "call_1"
    assert OTTERS_URL in tool.content and "hold hands" in tool.content
    # The usage is both rounds' sum: each round's prompt, one call token, then one text token.
    usage = item["usage"]
    assert usage["promptTokens"] == prompt_tokens(first) + prompt_tokens(second)
    assert usage["completionTokens"] == 1 + 1


async def test_several_rounds_each_held_and_settled(server: InProcess, admin: AdminClient) -> None:
    key = await admin.account_with_key("rounds", micros=10_000_000)
    server.engine.script = [
        [TextDelta("Looking."), search("otters", "c1")],
        [search("sea otters hands", "c2")],
        [TextDelta(" Done.")],
    ]
    body = task([{"type": "search"}])
    item = await run(server, key, body)
    assert item["text"] == "Looking. Done."
    assert [r["id"] for r in item["builtinTools"]] == ["c1", "c2"]
    assert len(server.engine.requests) == 3
    # Round 3 saw both rounds before it, in order, the text of round 1 with its call.
    roles = [m.role for m in server.engine.requests[2].messages]
    assert roles == ["user", "assistant", "tool", "assistant", "tool"]
    assert server.engine.requests[2].messages[1].content == "Looking."
    account = await admin.show("rounds")
    assert_ledger_consistent(account)
    mine = [e for e in account["ledger"] if e["request_id"] == body["taskUUID"]]
    assert [e["kind"] for e in mine].count("reservation") == 3
    assert [e["kind"] for e in mine].count("settlement") == 3
    assert account["usage"]["generations"] == 3  # one usage row per round
    assert account["usage"]["completion_tokens"] == item["usage"]["completionTokens"] == 4
    assert account["usage"]["prompt_tokens"] == item["usage"]["promptTokens"]
    charged = sum(-e["amount_micros"] for e in mine if e["kind"] == "settlement")
    assert charged == round(item["cost"] * 1_000_000)


async def test_max_tokens_bounds_every_round_together(server: InProcess, admin: AdminClient) -> None:
    key = await admin.account_with_key("budget", micros=10_000_000)
    server.engine.script = [[TextDelta("a"), TextDelta(" b"), search()], [TextDelta("c")]]
    await run(server, key, task([{"type": "search"}], settings={"maxTokens": 10}))
    assert [r.sampling.max_tokens for r in server.engine.requests] == [10, 7]


async def test_round_limit_withholds_the_tools_and_ends_with_length(
    server: InProcess, admin: AdminClient
) -> None:
    key = await admin.account_with_key("limit", micros=10_000_000)
    server.services.admissions.max_tool_rounds = 3
    server.engine.script = [[search()]]  # a model that never stops calling
    item = await run(server, key, task([{"type": "search"}], toolChoice={"type": "any"}))
    assert len(server.engine.requests) == 3
    first, second, last = server.engine.requests
    assert first.tool_choice.mode == "required" and second.tool_choice.mode == "auto"
    assert last.tools == () and last.tool_choice.mode == "none"
    runs = item["builtinTools"]
    assert len(runs) == 3
    assert [r["isError"] for r in runs] == [False, False, True]
    assert "Not run" in runs[2]["result"]["error"]
    assert item["finishReason"] == "length"
    assert_ledger_consistent(await admin.show("limit"))


async def test_failing_tool_is_a_result_for_the_model_not_an_error(
    server: InProcess, admin: AdminClient
) -> None:
    class DownBackend:
        async def search(self, query: str, limit: int) -> list[SearchHit]:
            raise ToolFailed("The search backend answered 502.")

    key = await admin.account_with_key("failing", micros=10_000_000)
    server.services.admissions.tools = ToolRegistry({"search": SearchTool(DownBackend())})
    server.engine.script = [[search("a", "c1"), call("search", "{not json", "c2")], [TextDelta("Sorry.")]]
    item = await run(server, key, task([{"type": "search"}]))
    assert item["text"] == "Sorry." and item["status"] == "success"
    first, second = item["builtinTools"]
    assert first["isError"] and first["result"] == {"error": "The search backend answered 502."}
    assert second["isError"] and "not a JSON object" in second["result"]["error"]
    told = [m.content for m in server.engine.requests[1].messages if m.role == "tool"]
    assert told == [
        "error: The search backend answered 502.",
        "error: The call's arguments are not a JSON object.",
    ]


async def test_tool_that_raises_is_reported_to_the_model(server: InProcess, admin: AdminClient) -> None:
    class Broken:
        name = "search"
        description = "Broken."
        parameters: dict[str, Any] = {"type": "object"}  # noqa: RUF012

        def check(self) -> None:
            return None

        async def run(self, arguments: dict[str, Any]) -> ToolOutput:
            raise RuntimeError("a bug")

    key = await admin.account_with_key("raises", micros=10_000_000)
    server.services.admissions.tools = ToolRegistry({"search": Broken()})
    server.engine.script = [[search()], [TextDelta("ok")]]
    item = await run(server, key, task([{"type": "search"}]))
    assert item["builtinTools"][0]["result"] == {"error": "The search tool failed on the server."}
    assert_ledger_consistent(await admin.show("raises"))


async def test_balance_short_for_the_next_round_stops_there_never_overspends(
    server: InProcess, admin: AdminClient
) -> None:
    probe_key = await admin.account_with_key("short-probe", micros=10_000_000)
    server.engine.script = [[search()], [TextDelta("answer")]]
    probe = task([{"type": "search"}])
    await run(server, probe_key, probe)
    ledger = (await admin.show("short-probe"))["ledger"]
    first_hold = next(
        e["hold_micros"]
        for e in ledger
        if e["kind"] == "reservation" and e["request_id"] == probe["taskUUID"]
    )
    key = await admin.account_with_key("short", micros=first_hold)  # covers round 1, not round 2
    reply = await post(server, key, task([{"type": "search"}]))
    assert reply.status_code == 402, reply.text
    assert reply.json()["errors"][0]["code"] == "insufficientCredits"
    account = await admin.show("short")
    assert_ledger_consistent(account)
    assert account["usage"]["generations"] == 1  # round 1 ran and was charged; round 2 never ran


async def test_client_function_beside_a_builtin_ends_with_its_call(
    server: InProcess, admin: AdminClient
) -> None:
    key = await admin.account_with_key("beside", micros=10_000_000)
    weather = call("get_weather", {"city": "Oslo"}, "w1")
    server.engine.script = [[search()], [weather]]
    item = await run(server, key, task([WEATHER, {"type": "search"}]))
    assert item["tools"] == [{"id": "w1", "name": "get_weather", "input": {"city": "Oslo"}}]
    assert [r["name"] for r in item["builtinTools"]] == ["search"]
    assert item["finishReason"] == "stop"  # Runware's reason for a call (no tool_calls reason)
    assert [t.name for t in server.engine.requests[0].tools] == ["get_weather", "search"]
    # Both in one round: the built-in runs (its result shown), the generation ends with the call.
    server.engine.requests.clear()
    server.engine.script = [[search(), weather]]
    item = await run(server, key, task([WEATHER, {"type": "search"}]))
    assert len(server.engine.requests) == 1
    assert item["tools"][0]["name"] == "get_weather" and item["builtinTools"][0]["isError"] is False


# ---- streaming and disconnects ------------------------------------------------------------


def sse(server: InProcess, key: str, body: dict[str, Any]) -> list[Any]:
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    frames: list[Any] = []
    with httpx.stream("POST", f"{server.base_url}/v1", json=[body], headers=headers, timeout=30) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data:"):
                payload = line.removeprefix("data:").strip()
                frames.append(payload if payload == "[DONE]" else json.loads(payload))
    return frames


async def test_stream_shows_each_call_then_its_result_as_they_happen(
    server: InProcess, admin: AdminClient
) -> None:
    key = await admin.account_with_key("stream", micros=10_000_000)
    server.engine.script = [[search()], [TextDelta("They"), TextDelta(" hold hands.")]]
    frames = await asyncio.to_thread(sse, server, key, task([{"type": "search"}], deliveryMethod="stream"))
    assert frames[-1] == "[DONE]"
    deltas = [f["delta"] for f in frames[:-2]]
    assert deltas[0] == {
        "builtinTools": [{"id": "call_1", "name": "search", "input": {"query": "otters sleep"}}]
    }
    [shown] = deltas[1]["builtinTools"]
    assert shown["result"]["results"][0]["url"] == OTTERS_URL and shown["citations"][0]["url"] == OTTERS_URL
    assert [d.get("text") for d in deltas[2:]] == ["They", " hold hands."]
    terminal = frames[-2]
    assert terminal["finishReason"] == "stop" and terminal["builtinTools"] == [shown]
    assert terminal["citations"] == [{"title": "Otters", "url": OTTERS_URL}]
    assert terminal["usage"]["completionTokens"] == 3


async def test_client_leaving_mid_loop_pays_for_the_rounds_it_got(
    server: InProcess, admin: AdminClient
) -> None:
    key = await admin.account_with_key("leaves", micros=10_000_000)
    server.engine.delay_s = 0.05
    server.engine.script = [[search()], [TextDelta(f" w{i}") for i in range(200)]]
    body = task([{"type": "search"}], deliveryMethod="stream", settings={"maxTokens": 500})
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream("POST", f"{server.base_url}/v1", json=[body], headers=headers) as r,
    ):
        texts = 0
        async for line in r.aiter_lines():
            if line.startswith("data:") and '"text"' in line:
                texts += 1
                if texts == 3:
                    break  # in round 2, after its result was shown
    assert await server.engine.all_closed()
    deadline = time.monotonic() + 5
    while (account := await admin.show("leaves"))["reserved_micros"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert_ledger_consistent(account)
    assert account["usage"]["generations"] == 2  # round 1 completed, round 2 cut
    assert 1 + 3 <= account["usage"]["completion_tokens"] < 1 + 200


async def test_client_leaving_during_a_tool_run_stops_it_and_pays_the_rounds_before(
    server: InProcess, admin: AdminClient
) -> None:
    ran: list[str] = []

    class Slow:
        name = "codeInterpreter"
        description = "Slow."
        parameters: dict[str, Any] = {"type": "object"}  # noqa: RUF012

        def check(self) -> None:
            return None

        async def run(self, arguments: dict[str, Any]) -> ToolOutput:
            ran.append("started")
            await asyncio.sleep(10)
            ran.append("finished")
            return ToolOutput("done", {})

    key = await admin.account_with_key("leaves-tool", micros=10_000_000)
    server.services.admissions.tools = ToolRegistry({"codeInterpreter": Slow()})
    server.engine.script = [[call("codeInterpreter", {"code": "x"})], [TextDelta("never")]]
    body = task([{"type": "codeInterpreter"}], deliveryMethod="stream")
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream("POST", f"{server.base_url}/v1", json=[body], headers=headers) as r,
    ):
        async for line in r.aiter_lines():
            if "builtinTools" in line:
                deadline = time.monotonic() + 5
                while not ran and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)  # still connected until the tool runs: then leave
                break
    deadline = time.monotonic() + 5
    while (account := await admin.show("leaves-tool"))["usage"][
        "generations"
    ] < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert ran == ["started"]
    assert len(server.engine.requests) == 1
    account = await admin.show("leaves-tool")
    assert_ledger_consistent(account)
    assert account["usage"]["generations"] == 1


# ---- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tools", "code", "param"),
    [
        ([{"type": "search"}, {"type": "search"}], "invalidTools", "tools.1.type"),
        ([{**WEATHER, "name": "search"}, {"type": "search"}], "invalidTools", "tools.0.name"),
    ],
)
async def test_bad_builtin_declarations_are_refused_by_name(
    server: InProcess, admin: AdminClient, tools: list[dict[str, Any]], code: str, param: str
) -> None:
    reply = await post(server, server.key, task(tools))
    assert reply.status_code == 400, reply.text
    error = reply.json()["errors"][0]
    assert (error["code"], error["parameter"]) == (code, param)


async def test_search_without_a_backend_is_refused_naming_tools(
    server: InProcess, admin: AdminClient, tmp_path: Path
) -> None:
    server.services.admissions.tools = ToolRegistry({"search": SearchTool(LocalIndex(tmp_path / "empty.db"))})
    server.engine.script = [[search()], [TextDelta("x")]]
    reply = await post(server, server.key, task([{"type": "search"}]))
    assert reply.status_code == 400, reply.text
    error = reply.json()["errors"][0]
    assert (error["code"], error["parameter"]) == ("unsupportedFeature", "tools")
    assert "KIMISERVE_SEARCH_URL" in error["message"]
    assert server.engine.requests == []  # refused before any generation


# ---- the official SDKs and the real tools -------------------------------------------------


async def test_runware_sdk_gets_the_final_answer(server: InProcess, admin: AdminClient) -> None:
    pytest.importorskip("runware")
    types = pytest.importorskip("runware.types")
    server.engine.script = [[search()], [TextDelta("They hold hands.")]]
    async with connected_sdk(server.base_url, server.key) as sdk:
        [result] = await sdk.textInference(
            types.ITextInference(
                model="moonshotai:kimi@2.6",
                messages=[types.ITextInferenceMessage(role="user", content="How do sea otters sleep?")],
                tools=[types.ITextInferenceTool(name="search", description="", toolType="search")],
                includeUsage=True,
            )
        )
    assert result.text == "They hold hands."
    assert len(server.engine.requests) == 2
    assert result.usage.completionTokens == 2


async def test_openai_sdk_client_tool_calls_still_end_the_generation(
    server: InProcess, admin: AdminClient
) -> None:
    """The OpenAI seeds name no built-in tools: that side runs none, and its function calls go
    through the pipeline's round as before (finish `tool_calls`, streamed deltas reassembled)."""
    server.engine.script = [[call("get_weather", {"city": "Oslo"}, "w1")]]
    fn = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["schema"]}}
    async with AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=server.key, max_retries=0) as client:
        reply = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Oslo?"}],
            tools=[fn],  # type: ignore[list-item]
        )
        async with client.beta.chat.completions.stream(
            model=MODEL,
            messages=[{"role": "user", "content": "Oslo?"}],
            tools=[fn],  # type: ignore[list-item]
        ) as stream:
            final = await stream.get_final_completion()
    for completion in (reply, final):
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        [tool_call] = choice.message.tool_calls or []
        assert tool_call.function.name == "get_weather" and json.loads(tool_call.function.arguments) == {
            "city": "Oslo"
        }
    assert len(server.engine.requests) == 2  # one round each


@needs_bwrap
async def test_real_code_interpreter_in_the_loop(server: InProcess, admin: AdminClient) -> None:
    server.engine.script = [
        [call("codeInterpreter", {"code": "print(6 * 7)"}, "c1")],
        [call("codeInterpreter", {"code": "import sys; sys.exit('no')"}, "c2")],
        [TextDelta("42")],
    ]
    item = await run(server, server.key, task([{"type": "codeInterpreter"}]))
    first, second = item["builtinTools"]
    assert "stdout" in first["result"], first
    assert first["result"]["stdout"] == "42\n" and first["result"]["exitStatus"] == 0
    assert second["result"]["exitStatus"] == 1 and "no" in second["result"]["stderr"]
    assert second["isError"] is False  # the program failed; the tool worked, the model is told
    told = [m.content for m in server.engine.requests[2].messages if m.role == "tool"]
    assert "exit status: 0" in told[0] and "42" in told[0]
    assert "exit status: 1" in told[1]
    assert item["text"] == "42"


async def test_real_local_index_answers_from_added_documents(server: InProcess, admin: AdminClient) -> None:
    server.engine.script = [[search("why do otters hold hands")], [TextDelta("So as not to drift apart.")]]
    item = await run(server, server.key, task([{"type": "search"}]))
    hit = item["builtinTools"][0]["result"]["results"][0]
    assert hit["title"] == "Otters" and "drift apart" in hit["snippet"]
    told = next(m.content for m in server.engine.requests[1].messages if m.role == "tool")
    assert told.startswith("[1] Otters\nURL: https://example.org/otters")


async def test_engine_without_tool_calling_refuses_builtins(server: InProcess, admin: AdminClient) -> None:
    engine = server.engine
    capabilities = engine.capabilities
    engine.capabilities = Capabilities(context_length=4096, max_concurrency=64)
    try:
        reply = await post(server, server.key, task([{"type": "codeInterpreter"}]))
    finally:
        engine.capabilities = capabilities
    assert reply.status_code == 400
    assert reply.json()["errors"][0]["parameter"] == "tools"


async def test_engine_failing_in_a_later_round_releases_that_round(
    server: InProcess, admin: AdminClient
) -> None:
    key = await admin.account_with_key("fails-late", micros=10_000_000)
    server.engine.script = [[search()], [TextDelta("a"), TextDelta(" b"), TextDelta(" c")]]
    server.engine.fail_after = 1  # each round: the second event fails (round 1 has one)
    try:
        reply = await post(server, key, task([{"type": "search"}]))
    finally:
        server.engine.fail_after = None
    assert reply.status_code >= 500 and reply.json()["errors"][0]["code"] == "inferenceError", reply.text
    account = await admin.show("fails-late")
    assert_ledger_consistent(account)  # nothing left held
    assert account["usage"]["generations"] == 1  # round 1 ran and was charged; round 2 was not
    assert account["usage"]["completion_tokens"] == 1
