"""A server-side failure reaches a Runware client as a server error, never a 4xx: an upstream's
502 (`UpstreamBroken`) as 500, its 504 (`timeoutProvider`) as 503, each with its code, on the
sync, stream and getResponse paths; client errors keep their status."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from kimiserve.domain.types import Event, GenerationRequest
from kimiserve.engines.openai_compat.errors import UpstreamBroken, UpstreamTimeout
from kimiserve.errors import KimiserveError
from kimiserve.protocols.runware.errors import status_of
from tests.inprocess import InProcess
from tests.platform.support import serving_with_admin_key


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    with serving_with_admin_key(tmp_path_factory.mktemp("server-errors")) as running:
        yield running


def failing(error: KimiserveError) -> Any:
    async def generate(request: GenerationRequest) -> AsyncIterator[Event]:
        raise error
        yield  # an async generator

    return generate


def task(**fields: Any) -> dict[str, Any]:
    return {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "moonshotai:kimi@2.6",
        "messages": [{"role": "user", "content": "hi"}],
        **fields,
    }


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UpstreamBroken("The upstream's stream ended early."), 500),
        (UpstreamTimeout("The upstream did not answer in time."), 503),
        (KimiserveError("A 418 from somewhere.", status=418), 400),
    ],
)
def test_statuses_fold_by_side(error: KimiserveError, status: int) -> None:
    assert status_of(error) == status


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (UpstreamBroken("The upstream's stream ended early."), 500, "inferenceError"),
        (UpstreamTimeout("The upstream did not answer in time."), 503, "timeoutProvider"),
    ],
)
@pytest.mark.parametrize("delivery", ["sync", "stream", "async"])
async def test_upstream_failures_are_server_errors(
    server: InProcess,
    monkeypatch: pytest.MonkeyPatch,
    error: KimiserveError,
    status: int,
    code: str,
    delivery: str,
) -> None:
    monkeypatch.setattr(server.engine, "generate", failing(error))
    sent = task(deliveryMethod=delivery)
    headers = {"Authorization": f"Bearer {server.key}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=30) as http:
        r = await http.post("/v1", json=[sent])
        if delivery == "async":
            assert r.status_code == 200  # acknowledged; the failure is the task's
            r = await http.post("/v1", json=[{"taskType": "getResponse", "taskUUID": sent["taskUUID"]}])
    assert r.status_code == status, r.text
    [item] = r.json()["errors"]
    assert item["code"] == code and item["taskUUID"] == sent["taskUUID"]
