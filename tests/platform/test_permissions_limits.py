"""Scopes, model allowlists and rate limits, in both protocols' own error formats."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.inprocess import InProcess, serve_in_process
from tests.platform.support import AdminClient, runware, serving_with_admin_key, text_task
from tests.serverproc import create_key

WINDOW_S = 2  # the per-minute windows, shortened so a test can wait one out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    data_dir: Path = tmp_path_factory.mktemp("limits")
    with serving_with_admin_key(data_dir, rate_limit_window_s=WINDOW_S) as running:
        yield running


@pytest.fixture
async def admin(server: InProcess) -> AsyncIterator[AdminClient]:
    server.engine.delay_s = 0.0
    client = AdminClient(server, server.key)
    yield client
    await client.aclose()
    server.engine.delay_s = 0.0


async def chat(server: InProcess, key: str, model: str = "kimi-k2.6") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "a b c"}], "max_tokens": 4}
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(
            f"{server.base_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        )


def runware_error(reply: httpx.Response) -> dict[str, Any]:
    [error] = reply.json()["errors"]
    return dict(error)


# ---- scopes and models ----------------------------------------------------------------------


async def test_each_scope_is_required(server: InProcess, admin: AdminClient) -> None:
    no_inference = await admin.account_with_key("scopes-a", scopes=["tasks:read", "media:upload"])
    reply = await runware(server, no_inference, text_task())
    assert reply.status_code == 403
    assert runware_error(reply)["code"] == "missingScope" and "'inference'" in runware_error(reply)["message"]
    reply = await chat(server, no_inference)
    assert reply.status_code == 403
    assert (
        reply.json()["error"]["type"] == "permission_error"
        and "'inference'" in reply.json()["error"]["message"]
    )

    only_inference = await admin.account_with_key("scopes-b", scopes=["inference"])
    task = text_task()
    assert (await runware(server, only_inference, task)).status_code == 200
    for refused, scope in (
        ({"taskType": "getResponse", "taskUUID": task["taskUUID"]}, "tasks:read"),
        ({"taskType": "getTaskDetails", "taskUUID": task["taskUUID"]}, "tasks:read"),
        ({"taskType": "imageUpload", "taskUUID": str(uuid.uuid4()), "image": "aGVsbG8="}, "media:upload"),
    ):
        reply = await runware(server, only_inference, refused)
        assert reply.status_code == 403, reply.text
        assert f"'{scope}'" in runware_error(reply)["message"]
    async with httpx.AsyncClient(timeout=30) as http:
        reply = await http.get(
            f"{server.base_url}/admin/accounts", headers={"Authorization": f"Bearer {only_inference}"}
        )
    assert reply.status_code == 403 and "'admin'" in reply.json()["error"]["message"]


async def test_model_allowlist(server: InProcess, admin: AdminClient) -> None:
    key = await admin.account_with_key("allowlist", models=["probe"])
    reply = await runware(server, key, text_task())  # kimi-k2.6 is not on the list
    assert reply.status_code == 403
    error = runware_error(reply)
    assert (error["code"], error["parameter"]) == ("modelNotAllowed", "model")
    reply = await chat(server, key)
    assert reply.status_code == 403 and reply.json()["error"]["param"] == "model"
    assert (await runware(server, key, {**text_task(), "model": "probe"})).status_code == 200
    assert (await chat(server, key, model="probe")).status_code == 200


# ---- rate limits ----------------------------------------------------------------------------


async def _refused_then_allowed(server: InProcess, key: str, send: Any) -> httpx.Response:
    """Send until refused with 429; wait out Retry-After; the same key is served again."""
    for _ in range(50):
        reply = await send()
        if reply.status_code == 429:
            break
        assert reply.status_code == 200, reply.text
    assert reply.status_code == 429
    retry_after = int(reply.headers["Retry-After"])
    assert 1 <= retry_after <= 2 * WINDOW_S  # a sliding window fades over up to two windows
    await asyncio.sleep(retry_after + 0.1)
    again = await send()
    assert again.status_code == 200, again.text
    return reply


async def test_requests_per_minute_per_key_and_per_account(server: InProcess, admin: AdminClient) -> None:
    key = await admin.account_with_key("rpm-key", limits={"rpm": 3})
    refused = await _refused_then_allowed(server, key, lambda: runware(server, key, text_task()))
    assert runware_error(refused)["code"] == "rateLimitExceeded"
    refused = await _refused_then_allowed(server, key, lambda: chat(server, key))
    assert refused.json()["error"]["type"] == "rate_limit_error"

    other = await admin.account_with_key("rpm-account")
    await admin.call("PUT", "/admin/accounts/rpm-account/limits", {"rpm": 2})
    second = (await admin.call("POST", "/admin/keys", {"account": "rpm-account", "name": "two"}))["key"]
    # Two keys of one account share the account's window.
    assert (await runware(server, other, text_task())).status_code == 200
    assert (await runware(server, second, text_task())).status_code == 200
    refused = await runware(server, other, text_task())
    assert refused.status_code == 429 and "account" in runware_error(refused)["message"]
    await asyncio.sleep(int(refused.headers["Retry-After"]) + 0.1)
    assert (await runware(server, second, text_task())).status_code == 200


async def test_tokens_per_minute(server: InProcess, admin: AdminClient) -> None:
    key = await admin.account_with_key("tpm", limits={"tpm": 60})
    refused = await _refused_then_allowed(server, key, lambda: runware(server, key, text_task(8)))
    assert "tokens" in runware_error(refused)["message"]
    too_big = await runware(server, key, text_task(8, text="x " * 200))  # more than a whole window
    assert too_big.status_code == 429 and runware_error(too_big)["parameter"] == "tpm"


async def test_concurrent_requests(server: InProcess, admin: AdminClient) -> None:
    key = await admin.account_with_key("concurrency", limits={"concurrency": 2})
    server.engine.delay_s = 0.1
    replies = await asyncio.gather(*(runware(server, key, text_task(8)) for _ in range(5)))
    statuses = sorted(r.status_code for r in replies)
    assert statuses.count(200) == 2 and statuses.count(429) == 3
    assert all(r.headers["Retry-After"] == "1" for r in replies if r.status_code == 429)
    assert (await runware(server, key, text_task(2))).status_code == 200  # slots given back


async def test_openai_rate_limit_headers(server: InProcess, admin: AdminClient) -> None:
    key = await admin.account_with_key("headers", limits={"rpm": 10, "tpm": 1000})
    reply = await chat(server, key)
    assert reply.status_code == 200
    assert reply.headers["x-ratelimit-limit-requests"] == "10"
    assert reply.headers["x-ratelimit-remaining-requests"] == "9"
    assert reply.headers["x-ratelimit-limit-tokens"] == "1000"
    assert int(reply.headers["x-ratelimit-remaining-tokens"]) < 1000
    assert reply.headers["x-ratelimit-reset-requests"].endswith("s")


async def test_admission_refuses_what_the_engine_cannot_queue(tmp_path: Path) -> None:
    """100 async tasks in one array: what fits the engine's batch and queue is acknowledged and
    completes; the rest is refused up front (503), never acknowledged and then failed."""
    key = create_key(tmp_path)
    with serve_in_process(tmp_path, max_waiting=4) as server:
        capacity = server.engine.capabilities.max_concurrency + 4
        server.engine.delay_s = 0.05
        tasks = [text_task(8, deliveryMethod="async") for _ in range(100)]
        async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
            reply = (await http.post(f"{server.base_url}/v1", json=tasks)).json()
            acked = [item["taskUUID"] for item in reply["data"]]
            refused = reply["errors"]
            assert len(acked) == capacity and len(refused) == 100 - capacity
            assert {e["code"] for e in refused} == {"serviceUnavailable"}
            for task_uuid in acked:
                poll = [{"taskType": "getResponse", "taskUUID": task_uuid}]
                [item] = (await http.post(f"{server.base_url}/v1", json=poll)).json()["data"]
                assert item["status"] == "success", item
        assert server.services.admissions.outstanding == {}
