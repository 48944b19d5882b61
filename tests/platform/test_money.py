"""The ledger under load: holds never let an account overspend, a client that leaves pays for
what it got, a failure between engine and settlement charges nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI

from kimiserve.domain.types import Finished, TextDelta, Usage
from tests.inprocess import InProcess
from tests.platform.support import AdminClient, assert_ledger_consistent, serving_with_admin_key, text_task
from tests.protocols.openai.support import usage_rows


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    data_dir: Path = tmp_path_factory.mktemp("money")
    with serving_with_admin_key(data_dir) as running:
        yield running


@pytest.fixture
async def admin(server: InProcess) -> AsyncIterator[AdminClient]:
    server.engine.delay_s, server.engine.fail_after, server.engine.script = 0.0, None, None
    client = AdminClient(server, server.key)
    yield client
    await client.aclose()
    server.engine.delay_s, server.engine.fail_after, server.engine.script = 0.0, None, None


async def _post(server: InProcess, key: str, task: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(
            f"{server.base_url}/v1", json=[task], headers={"Authorization": f"Bearer {key}"}
        )


async def _hold_of_one_generation(server: InProcess, admin: AdminClient, name: str) -> int:
    """What one generation of `text_task(8)` holds: read from a rich account's ledger."""
    key = await admin.account_with_key(name, micros=100_000_000)
    task = text_task(8)
    assert (await _post(server, key, task)).status_code == 200
    ledger = (await admin.show(name))["ledger"]
    [hold] = [
        e["hold_micros"] for e in ledger if e["kind"] == "reservation" and e["request_id"] == task["taskUUID"]
    ]
    assert hold > 0
    return int(hold)


@pytest.mark.parametrize("n", [1, 4])
async def test_balance_covering_ten_never_runs_more_than_ten(
    server: InProcess, admin: AdminClient, n: int
) -> None:
    hold = await _hold_of_one_generation(server, admin, f"probe-{n}")
    key = await admin.account_with_key(f"ten-{n}", micros=10 * n * hold)
    server.engine.delay_s = 0.2  # ~2 s a request: all 100 arrive while the first ones run
    server.engine.most_at_once = 0
    replies = await asyncio.gather(*(_post(server, key, text_task(8, n)) for _ in range(100)))
    statuses = [r.status_code for r in replies]
    assert statuses.count(200) >= 10
    assert statuses.count(402) >= 1
    assert set(statuses) <= {200, 402, 503}  # 503: beyond what the engine can queue (400 generations)
    for r in replies:
        if r.status_code == 402:
            assert r.json()["errors"][0]["code"] == "insufficientCredits"
    assert server.engine.most_at_once <= 10 * n
    account = await admin.show(f"ten-{n}")
    assert_ledger_consistent(account)
    assert account["usage"]["generations"] == statuses.count(200) * n


async def test_half_the_streams_disconnected_pay_for_what_they_got(
    server: InProcess, admin: AdminClient
) -> None:
    key = await admin.account_with_key("streams", micros=50_000_000)
    server.engine.delay_s = 0.02
    words = " ".join(f"w{i}" for i in range(60))

    async def one(leave: bool) -> str:
        async with AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0) as client:
            stream = await client.chat.completions.create(
                model="kimi-k2.6", messages=[{"role": "user", "content": words}], stream=True
            )
            request_id = ""
            async for chunk in stream:
                request_id = chunk.id
                if leave and chunk.choices and chunk.choices[0].delta.content:
                    break
            await stream.close()
            return request_id

    ids = await asyncio.gather(*(one(leave=i % 2 == 0) for i in range(10)))
    assert await server.engine.all_closed()
    deadline = time.monotonic() + 5
    while (account := await admin.show("streams"))["reserved_micros"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert_ledger_consistent(account)
    usage = account["usage"]
    assert usage["generations"] == 10
    full = 61  # echo[seed] + 60 words
    assert usage["completion_tokens"] < 10 * full  # the five that left paid for less
    assert usage["completion_tokens"] >= 5 * full + 5  # the five that stayed paid in full
    assert len(set(ids)) == 10


async def test_failure_between_engine_and_settlement_charges_nothing(
    server: InProcess, admin: AdminClient
) -> None:
    key = await admin.account_with_key("settle-fails", micros=5_000_000)
    pipeline = server.services.admissions
    real = pipeline.settle_hook

    async def broken(hold: Any, usage: Any) -> None:
        raise ConnectionError("the database went away")

    pipeline.settle_hook = broken
    try:
        reply = await _post(server, key, text_task(4))
    finally:
        pipeline.settle_hook = real
    assert reply.status_code == 500
    [error] = reply.json()["errors"]
    assert error["code"] == "internalServerError" and "reference" in error["message"]
    account = await admin.show("settle-fails")
    assert account["balance_micros"] == 5_000_000  # nothing charged
    assert account["usage"]["generations"] == 0  # no usage row without its charge
    assert [e["kind"] for e in account["ledger"]] == ["topup", "reservation", "release"]
    assert_ledger_consistent(account)
    # The same account works once settlement does.
    assert (await _post(server, key, text_task(4))).status_code == 200
    assert_ledger_consistent(await admin.show("settle-fails"))


async def test_reused_task_uuid_is_never_charged_twice(server: InProcess, admin: AdminClient) -> None:
    key = await admin.account_with_key("replay", micros=5_000_000)
    task = text_task(4)
    assert (await _post(server, key, task)).status_code == 200
    again = await _post(server, key, task)
    assert again.status_code == 400  # Runware answers 409 conflicts as 400
    assert again.json()["errors"][0]["code"] == "conflictTaskUUID"
    account = await admin.show("replay")
    assert account["usage"]["generations"] == 1
    assert_ledger_consistent(account)


async def test_unmetered_account_records_usage_and_cost(server: InProcess, admin: AdminClient) -> None:
    key = await admin.account_with_key("unmetered")
    reply = await _post(server, key, {**text_task(4), "includeCost": True})
    assert reply.status_code == 200
    account = await admin.show("unmetered")
    assert account["metered"] is False and account["ledger"] == []
    assert account["usage"]["generations"] == 1 and account["usage"]["cost_micros"] > 0
    assert reply.json()["data"][0]["cost"] == account["usage"]["cost_micros"] / 1_000_000


async def test_usage_beyond_the_hold_is_charged_the_hold(server: InProcess, admin: AdminClient) -> None:
    """An engine that reports more than the worst case held (an upstream that re-asked a tool call,
    or counts the prompt larger than the pipeline's bound) is charged its hold, never more: the
    balance cannot go below zero, and the cost the reply reports is that amount."""
    hold = await _hold_of_one_generation(server, admin, "beyond-hold-probe")
    key = await admin.account_with_key("beyond-hold", micros=hold)
    server.engine.script = [
        [TextDelta("hi"), Usage(prompt_tokens=1_000_000, completion_tokens=1), Finished("stop")]
    ]
    task = text_task(8, includeCost=True)
    reply = await _post(server, key, task)
    assert reply.status_code == 200
    account = await admin.show("beyond-hold")
    assert reply.json()["data"][0]["cost"] == hold / 1_000_000  # the client is told what it paid
    assert account["balance_micros"] == 0 and account["reserved_micros"] == 0
    [settled] = [e for e in account["ledger"] if e["kind"] == "settlement"]
    assert settled["amount_micros"] == -hold
    assert account["usage"]["prompt_tokens"] == 1_000_000 and account["usage"]["cost_micros"] == hold
    assert_ledger_consistent(account)


async def test_anthropic_message_is_held_settled_and_recorded(server: InProcess, admin: AdminClient) -> None:
    """A Messages request (issue 19) goes through the same hold → settle → usage row as a chat
    completion, its row marked `anthropic`; a stream likewise, and a refused one charges nothing."""
    key = await admin.account_with_key("anthropic", micros=5_000_000)
    ask: Any = [{"role": "user", "content": "a b c d"}]
    async with AsyncAnthropic(base_url=server.base_url, api_key=key, max_retries=0) as client:
        reply = await client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=ask)
        async with client.messages.stream(model="kimi-k2.6", max_tokens=8, messages=ask) as stream:
            streamed = await stream.get_final_message()
    account = await admin.show("anthropic")
    assert_ledger_consistent(account)
    kinds = [e["kind"] for e in account["ledger"]]
    assert kinds == ["topup", "reservation", "settlement", "reservation", "settlement"]
    holds = [e for e in account["ledger"] if e["kind"] == "reservation"]
    assert {e["request_id"] for e in holds} == {reply.id, streamed.id}
    mine = [row for rid in (reply.id, streamed.id) for row in usage_rows(server.data_dir, rid)]
    assert [r["protocol"] for r in mine] == ["anthropic", "anthropic"]
    assert sum(r["cost_micros"] for r in mine) == 5_000_000 - account["balance_micros"] > 0
    assert [r["completion_tokens"] for r in mine] == [reply.usage.output_tokens, streamed.usage.output_tokens]


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
async def test_a_response_is_held_settled_and_recorded(
    server: InProcess, admin: AdminClient, stream: bool
) -> None:
    """POST /v1/responses (issue 19) on the same money rules: one hold, one settlement of the
    usage it reports, one usage row under the response's id with protocol `responses`."""
    name = f"responses-{'stream' if stream else 'create'}"
    key = await admin.account_with_key(name, micros=5_000_000)
    async with AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0) as client:
        if stream:
            async with client.responses.stream(model="kimi-k2.6", input="a b c", max_output_tokens=8) as s:
                reply = await s.get_final_response()
        else:
            reply = await client.responses.create(model="kimi-k2.6", input="a b c", max_output_tokens=8)
    account = await admin.show(name)
    assert_ledger_consistent(account)
    assert [e["kind"] for e in account["ledger"]] == ["topup", "reservation", "settlement"]
    [held] = [e for e in account["ledger"] if e["kind"] == "reservation"]
    [settled] = [e for e in account["ledger"] if e["kind"] == "settlement"]
    assert held["request_id"] == settled["request_id"] == reply.id
    assert 0 < -settled["amount_micros"] <= held["hold_micros"]
    [row] = usage_rows(server.data_dir, reply.id)
    assert row["protocol"] == "responses" and row["cost_micros"] == -settled["amount_micros"]
    assert reply.usage is not None
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        reply.usage.input_tokens,
        reply.usage.output_tokens,
    )


async def test_a_response_stream_left_early_pays_for_what_it_got(
    server: InProcess, admin: AdminClient
) -> None:
    key = await admin.account_with_key("responses-left", micros=5_000_000)
    server.engine.delay_s = 0.02
    words = " ".join(f"w{i}" for i in range(60))
    async with AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0) as client:
        stream = await client.responses.create(model="kimi-k2.6", input=words, stream=True)
        async for event in stream:
            if event.type == "response.output_text.delta":
                break
        await stream.close()
    assert await server.engine.all_closed()
    deadline = time.monotonic() + 5
    while (account := await admin.show("responses-left"))["reserved_micros"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert_ledger_consistent(account)
    assert account["usage"]["generations"] == 1
    assert 0 < account["usage"]["completion_tokens"] < 61  # less than the whole echo
