"""An upstream that dies mid-stream, through a real kimiserve with a metered account: the client
gets a clean terminal error, and the account pays exactly for the tokens it was sent (issue 12);
a death before the first token, or under a non-streamed request, stays free (issue 8). The same
metered front checks what a budget-forced answer (two upstream requests) is charged."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from tests.engines.upstream.test_server import MODELS
from tests.platform.support import assert_ledger_consistent
from tests.protocols.openai.support import usage_rows
from tests.protocols.runware.wire import sse_events
from tests.serverproc import ServerProcess, cli, create_key
from tests.standin.process import StandinProcess

PRICE = (480_000, 2_000_000)  # micro-USD per million input / output tokens (MODELS' price)


@dataclass
class Metered:
    server: ServerProcess
    key: str
    standin: StandinProcess
    data: Path

    def account(self) -> dict[str, Any]:
        view: dict[str, Any] = json.loads(cli(self.data, "accounts", "show", "payer", "--json"))
        return view

    def revive(self) -> None:
        """The stand-in again on its port, and the front's pool told so (its probe re-admits it)."""
        if self.standin.proc is not None and self.standin.proc.poll() is not None:
            self.standin.proc = None
        if self.standin.proc is None:
            self.standin.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if httpx.get(f"{self.server.base_url}/health", timeout=5).status_code == 200:
                return
            time.sleep(0.2)


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Metered]:
    standin = StandinProcess("dies-midway").start()
    tmp = tmp_path_factory.mktemp("interrupted")
    models = tmp / "models.toml"
    models.write_text(MODELS.format(url=standin.url, model="moonshotai/Kimi-K2.6", dialect="vllm"))
    data = tmp / "front"
    cli(data, "accounts", "create", "payer")
    cli(data, "accounts", "top-up", "payer", "5")
    key = create_key(data, "payer", "payer")
    server = ServerProcess(data, env={"KIMISERVE_MODELS_FILE": str(models), "KIMISERVE_ENGINE": "fake"})
    server.start()
    yield Metered(server, key, standin, data)
    server.stop()
    standin.stop()


def openai_client(metered: Metered) -> AsyncOpenAI:
    """The OpenAI SDK on the metered account's key, without its retries."""
    return AsyncOpenAI(base_url=f"{metered.server.base_url}/v1", api_key=metered.key, max_retries=0)


def cost(prompt: int, completion: int) -> int:
    """Micro-USD, rounded half up like `Price.cost` (no cached tokens here)."""
    return (prompt * PRICE[0] + completion * PRICE[1] + 500_000) // 1_000_000


async def test_stream_dying_midway_ends_with_an_error_and_charges_what_was_sent(metered: Metered) -> None:
    metered.revive()
    before = metered.account()
    async with openai_client(metered) as client:
        stream = await client.chat.completions.create(
            model="kimi-k2.6",
            messages=[{"role": "user", "content": "one two three #die four"}],
            max_tokens=64,
            stream=True,
        )
        text, request_id = "", ""
        started = time.monotonic()
        with pytest.raises(openai.APIError) as caught:
            async for chunk in stream:
                request_id = chunk.id
                text += chunk.choices[0].delta.content or "" if chunk.choices else ""
        ended = time.monotonic() - started
    assert text == "one two three"  # what the upstream sent before it died, and nothing else
    assert "closed the stream before it finished" in caught.value.message
    assert ended < 5
    [row] = usage_rows(metered.data, request_id)
    assert row["outcome"] == "interrupted" and row["completion_tokens"] == 3
    assert row["prompt_tokens"] > 0 and row["cost_micros"] == cost(row["prompt_tokens"], 3)
    after = metered.account()
    assert_ledger_consistent(after)  # nothing left held, the settlements add up to the usage
    assert before["balance_micros"] - after["balance_micros"] == row["cost_micros"]
    new = after["ledger"][len(before["ledger"]) :]
    assert [e["kind"] for e in new] == ["reservation", "settlement"]  # settled once, never released too


async def test_death_before_the_first_token_is_free(metered: Metered) -> None:
    metered.revive()
    before = metered.account()
    async with openai_client(metered) as client:
        with pytest.raises(openai.APIError):
            stream = await client.chat.completions.create(
                model="kimi-k2.6",
                messages=[{"role": "user", "content": "#die at once"}],
                max_tokens=64,
                stream=True,
            )
            async for _ in stream:
                pass
    after = metered.account()
    assert_ledger_consistent(after)
    assert after["balance_micros"] == before["balance_micros"]
    assert after["usage"]["generations"] == before["usage"]["generations"]
    assert [e["kind"] for e in after["ledger"][len(before["ledger"]) :]] == ["reservation", "release"]


async def test_unstreamed_request_dying_midway_is_free(metered: Metered) -> None:
    metered.revive()
    before = metered.account()
    async with openai_client(metered) as client:
        with pytest.raises(openai.APIError):
            await client.chat.completions.create(
                model="kimi-k2.6",
                messages=[{"role": "user", "content": "one two #die three"}],
                max_tokens=64,
            )
    after = metered.account()
    assert_ledger_consistent(after)
    assert after["balance_micros"] == before["balance_micros"]  # nothing reached the client
    assert after["usage"]["generations"] == before["usage"]["generations"]


def test_runware_stream_dying_midway_ends_with_an_error_frame_and_charges_what_was_sent(
    metered: Metered,
) -> None:
    metered.revive()
    before = metered.account()
    task = {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "moonshotai:kimi@2.6",
        "messages": [{"role": "user", "content": "alpha beta #die gamma"}],
        "settings": {"maxTokens": 64},
        "deliveryMethod": "stream",
    }
    headers = {"Authorization": f"Bearer {metered.key}"}
    started = time.monotonic()
    with httpx.stream("POST", f"{metered.server.base_url}/v1", json=[task], headers=headers, timeout=30) as r:
        assert r.status_code == 200
        frames = sse_events(r)
    assert time.monotonic() - started < 5
    assert "".join(f["delta"]["text"] for f in frames if isinstance(f, dict) and "delta" in f) == "alpha beta"
    terminal = [f for f in frames if isinstance(f, dict) and "errors" in f]
    assert len(terminal) == 1 and terminal[0]["errors"][0]["code"] == "inferenceError"
    assert terminal[0]["errors"][0]["taskUUID"] == task["taskUUID"]
    [row] = usage_rows(metered.data, task["taskUUID"])
    assert row["outcome"] == "interrupted" and row["completion_tokens"] == 2
    after = metered.account()
    assert_ledger_consistent(after)
    assert before["balance_micros"] - after["balance_micros"] == row["cost_micros"] > 0


async def test_budget_forced_answer_is_charged_as_one_request_within_its_hold(metered: Metered) -> None:
    """Budget forcing (two upstream requests) charges the answer's usage: one prompt, the cut
    reasoning plus the answer; never more than the hold taken for it."""
    metered.revive()
    before = metered.account()
    async with openai_client(metered) as client:
        reply = await client.chat.completions.create(
            model="kimi-k2.6",
            messages=[{"role": "user", "content": "think then answer #reason-900"}],
            reasoning_effort="low",
            max_completion_tokens=400,
        )
    assert reply.usage is not None and reply.usage.completion_tokens == 256 + 4
    [row] = usage_rows(metered.data, reply.id)
    assert row["outcome"] == "completed" and row["reasoning_tokens"] == 256
    assert row["prompt_tokens"] == 5  # the first request's prompt only (4 words + 1 per message)
    assert row["cost_micros"] == cost(5, 260)
    after = metered.account()
    assert_ledger_consistent(after)
    reservation, settlement = after["ledger"][len(before["ledger"]) :]
    assert (reservation["kind"], settlement["kind"]) == ("reservation", "settlement")
    assert -settlement["amount_micros"] == row["cost_micros"] <= reservation["hold_micros"]
