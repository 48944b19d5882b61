"""Requests no route answers are refused in the format of the protocol they speak (issue 21)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from kimiserve.http.notfound import protocol_of
from tests.protocols.openai.support import MODEL, messages
from tests.serverproc import ServerProcess


@pytest.fixture
async def client(server: ServerProcess, api_key: str) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=api_key, max_retries=0) as c:
        yield c


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        ("/v1/responses", {}, "responses"),
        ("/v1/responses/resp_1/nope", {}, "responses"),
        ("/v1/responsesx", {}, "openai"),
        ("/v1/embeddings", {}, "openai"),
        ("/v1/completions", {}, "openai"),
        ("/v1/chat/nope", {}, "openai"),
        ("/v1/messages", {}, "anthropic"),
        ("/v1/messages/count_tokens", {}, "anthropic"),
        ("/v1/responses", {"anthropic-version": "2023-06-01"}, "anthropic"),
        ("/v1", {}, "runware"),
        ("/", {}, "runware"),
        ("/v2/tasks", {}, "runware"),
        ("/v1messages", {}, "runware"),
    ],
)
def test_protocol_of(path: str, headers: dict[str, str], expected: str) -> None:
    scope = {"type": "http", "path": path, "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    assert protocol_of(scope) == expected


async def test_openai_sdk_unknown_endpoints_have_code_and_type(client: AsyncOpenAI) -> None:
    calls = [
        client.embeddings.create(model=MODEL, input="hi"),
        client.moderations.create(model=MODEL, input="hi"),
        client.completions.create(model=MODEL, prompt="hi", max_tokens=4),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as info:
            await call
        assert info.value.status_code == 404
        assert info.value.code == "not_found"
        assert info.value.type == "invalid_request_error"
        assert "/v1/" in info.value.message


def test_raw_openai_method_not_allowed(server: ServerProcess, api_key: str) -> None:
    reply = httpx.get(
        f"{server.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    )
    assert reply.status_code == 405
    assert "POST" in reply.headers["allow"]
    error = reply.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "method_not_allowed")
    assert set(error) >= {"message", "type", "param", "code"}


def test_raw_anthropic_paths_and_header(server: ServerProcess, api_key: str) -> None:
    body = {"model": MODEL, "max_tokens": 8, "messages": messages()}
    for path, headers in [
        ("/v1/messages/batches", {}),
        ("/v1/complete", {"anthropic-version": "2023-06-01"}),
    ]:
        reply = httpx.post(
            f"{server.base_url}{path}", json=body, headers={"x-api-key": api_key, **headers}, timeout=30
        )
        assert reply.status_code == 404, path
        assert reply.headers["content-type"].startswith("application/json")
        out = reply.json()
        assert out["type"] == "error"
        assert out["error"]["type"] == "not_found_error"
        assert path in out["error"]["message"]


def test_raw_runware_elsewhere(server: ServerProcess) -> None:
    reply = httpx.post(f"{server.base_url}/v2", json=[], timeout=30)
    assert reply.status_code == 404
    (item,) = reply.json()["errors"]
    assert item["code"] == "notFound"


def test_raw_responses_subpath(server: ServerProcess, api_key: str) -> None:
    reply = httpx.post(
        f"{server.base_url}/v1/responses/resp_1/cancel",
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=30,
    )
    assert reply.status_code == 404
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] and "/v1/responses" in error["message"]
