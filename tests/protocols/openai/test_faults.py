"""Faults the real model cannot be asked for: a stream that dies, a slow engine, a client that
leaves. The app runs in-process under uvicorn with the scripted fake engine behind Kimi's names.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from tests.inprocess import InProcess, serve_in_process
from tests.protocols.openai.support import MODEL, usage_rows
from tests.serverproc import create_key

LONG = " ".join(f"w{i}" for i in range(400))


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    data_dir = tmp_path_factory.mktemp("faults")
    key = create_key(data_dir)
    with serve_in_process(data_dir, keepalive_s=0.2) as server:
        server.key = key
        yield server


@pytest.fixture
async def probe(app_server: InProcess) -> AsyncIterator[InProcess]:
    engine = app_server.engine
    engine.delay_s, engine.fail_after = 0.0, None
    yield app_server
    engine.delay_s, engine.fail_after = 0.0, None


@pytest.fixture
async def oa(probe: InProcess) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{probe.base_url}/v1", api_key=probe.key, max_retries=0) as c:
        yield c


def _auth(probe: InProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {probe.key}"}


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def test_stream_dying_midway_reports_in_band(probe: InProcess, oa: AsyncOpenAI) -> None:
    probe.engine.fail_after = 3
    stream = await oa.chat.completions.create(model=MODEL, messages=user("a b c d e"), stream=True)
    text = ""
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert text.startswith("echo[")
    assert "request id req_" in info.value.message


async def test_failure_before_the_first_event_is_an_http_error(probe: InProcess, oa: AsyncOpenAI) -> None:
    probe.engine.fail_after = 0
    with pytest.raises(openai.InternalServerError) as info:
        await oa.chat.completions.create(model=MODEL, messages=user("a b"), stream=True)
    assert info.value.status_code == 500
    assert info.value.response.headers["x-request-id"] in info.value.message


async def test_n_streams_one_failing_reports_in_band(probe: InProcess, oa: AsyncOpenAI) -> None:
    probe.engine.fail_after = 2
    stream = await oa.chat.completions.create(model=MODEL, messages=user("a b c"), stream=True, n=3)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    assert await probe.engine.all_closed()


async def test_stream_disconnect_cancels_generation(probe: InProcess, oa: AsyncOpenAI) -> None:
    probe.engine.delay_s = 0.02
    stream = await oa.chat.completions.create(model=MODEL, messages=user(LONG), stream=True, n=2)
    request_id = ""
    async for chunk in stream:
        request_id = chunk.id
        if chunk.choices and chunk.choices[0].delta.content:
            break
    await stream.close()
    assert await probe.engine.all_closed()
    # Both generations were cut off: each pays for what it produced until then, and no more.
    deadline = time.monotonic() + 5
    while len(rows := usage_rows(probe.data_dir, request_id)) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert [r["outcome"] for r in rows] == ["disconnected", "disconnected"]
    assert all(r["completion_tokens"] < 400 for r in rows)


async def test_unstreamed_disconnect_cancels_generation(probe: InProcess) -> None:
    probe.engine.delay_s = 0.02
    started = probe.engine.started
    async with httpx.AsyncClient(timeout=0.3, headers=_auth(probe)) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(
                f"{probe.base_url}/v1/chat/completions", json={"model": MODEL, "messages": user(LONG)}
            )
    assert probe.engine.started == started + 1
    assert await probe.engine.all_closed()


async def test_keepalive_while_silent(probe: InProcess) -> None:
    probe.engine.delay_s = 0.5
    async with (
        httpx.AsyncClient(timeout=10, headers=_auth(probe)) as http,
        http.stream(
            "POST",
            f"{probe.base_url}/v1/chat/completions",
            json={"model": MODEL, "messages": user("a"), "stream": True},
        ) as response,
    ):
        lines = [line async for line in response.aiter_lines()]
    assert response.status_code == 200
    assert ": ping" in lines
    assert lines[-2:] == ["data: [DONE]", ""] or lines[-1] == "data: [DONE]"
