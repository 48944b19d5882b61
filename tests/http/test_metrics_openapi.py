"""/metrics parses with prometheus-client's own parser and moves with traffic; /openapi.json is
a valid OpenAPI document matching the routes; every response carries one request id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route

from kimiserve.app import create_app
from tests.inprocess import InProcess, serve_in_process
from tests.platform.support import text_task
from tests.serverproc import create_key


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    data_dir: Path = tmp_path_factory.mktemp("metrics")
    key = create_key(data_dir)
    with serve_in_process(data_dir) as running:
        running.key = key
        yield running


def samples(server: InProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{server.base_url}/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_metrics_move_with_traffic(server: InProcess) -> None:
    ok = (
        "kimiserve_requests_total",
        frozenset({("protocol", "runware"), ("task_type", "textInference"), ("status", "success")}),
    )
    bad = (
        "kimiserve_requests_total",
        frozenset({("protocol", "runware"), ("task_type", "textInference"), ("status", "invalidModel")}),
    )
    chat = (
        "kimiserve_requests_total",
        frozenset({("protocol", "openai"), ("task_type", "chat.completion"), ("status", "success")}),
    )
    responses = (
        "kimiserve_requests_total",
        frozenset({("protocol", "responses"), ("task_type", "response"), ("status", "success")}),
    )
    before = samples(server)
    headers = {"Authorization": f"Bearer {server.key}"}
    for _ in range(3):
        assert httpx.post(f"{server.base_url}/v1", json=[text_task()], headers=headers).status_code == 200
    assert (
        httpx.post(
            f"{server.base_url}/v1", json=[{**text_task(), "model": "nope"}], headers=headers
        ).status_code
        == 400
    )
    body = {"model": "kimi-k2.6", "messages": [{"role": "user", "content": "a b"}], "max_tokens": 3}
    assert httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=headers).status_code == 200
    for stream in (False, True):
        response = {"model": "kimi-k2.6", "input": "a b", "max_output_tokens": 3, "stream": stream}
        assert (
            httpx.post(f"{server.base_url}/v1/responses", json=response, headers=headers).status_code == 200
        )
    after = samples(server)
    assert after[ok] - before.get(ok, 0) == 3
    assert after[bad] - before.get(bad, 0) == 1
    assert after[chat] - before.get(chat, 0) == 1
    assert after[responses] - before.get(responses, 0) == 2
    ttft = ("kimiserve_time_to_first_token_seconds_count", frozenset({("model", "kimi-k2.6")}))
    assert after[ttft] - before.get(ttft, 0) == 6
    assert after[("kimiserve_reserved_credit_micros", frozenset())] == 0
    assert (
        "kimiserve_engine_sequences_in_flight",
        frozenset({("engine", "fake")}),
    ) not in after  # fake has none


def test_metrics_count_the_messages_api(server: InProcess) -> None:
    def key(operation: str, status: str) -> tuple[str, frozenset[tuple[str, str]]]:
        labels = {("protocol", "anthropic"), ("task_type", operation), ("status", status)}
        return ("kimiserve_requests_total", frozenset(labels))

    before = samples(server)
    headers = {"x-api-key": server.key}
    body = {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "a b"}], "max_tokens": 3}
    assert httpx.post(f"{server.base_url}/v1/messages", json=body, headers=headers).status_code == 200
    count = httpx.post(f"{server.base_url}/v1/messages/count_tokens", json=body, headers=headers)
    assert count.status_code == 200 and count.json()["input_tokens"] > 0
    bad = httpx.post(f"{server.base_url}/v1/messages", json={**body, "model": "gpt-4"}, headers=headers)
    assert bad.status_code == 404 and bad.json()["error"]["type"] == "not_found_error"
    after = samples(server)
    for k in (
        key("messages", "success"),
        key("messages.count_tokens", "success"),
        key("messages", "invalidModel"),
    ):
        assert after[k] - before.get(k, 0) == 1, k


def test_openapi_document_is_valid_and_matches_the_routes(server: InProcess) -> None:
    doc = httpx.get(f"{server.base_url}/openapi.json").json()
    validate(doc)
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    served = {
        (r.path, m)
        for r in create_app(server.services.settings).routes
        if isinstance(r, Route)
        for m in (r.methods or ())
        if m != "HEAD"
    }
    served = {(p.replace(":path}", "}"), m) for p, m in served}
    assert documented == served - {("/openapi.json", "GET"), ("/docs", "GET")}
    schemas = doc["components"]["schemas"]
    temperature = schemas["Settings"]["properties"]["temperature"]
    assert (temperature["minimum"], temperature["maximum"]) == (0, 2)  # seed 000's bounds
    page = httpx.get(f"{server.base_url}/docs")
    assert page.status_code == 200 and "/v1/chat/completions" in page.text and "<script" not in page.text


def test_one_request_id_per_response(server: InProcess) -> None:
    reply = httpx.post(
        f"{server.base_url}/v1/chat/completions", json={}, headers={"Authorization": "Bearer x"}
    )
    rid = reply.headers["x-request-id"]
    assert rid.startswith("req_") and reply.json()["error"]["request_id"] == rid
    task = httpx.post(
        f"{server.base_url}/v1", json=[{"taskType": "nope"}], headers={"Authorization": "Bearer x"}
    )
    assert task.json()["errors"][0]["requestId"] == task.headers["x-request-id"]
    health = httpx.get(f"{server.base_url}/health")
    assert health.headers["x-request-id"].startswith("req_")
    mine = httpx.get(f"{server.base_url}/health", headers={"x-request-id": "trace-123"})
    assert mine.headers["x-request-id"] == "trace-123"
    evil = httpx.get(f"{server.base_url}/health", headers={"x-request-id": "a b\tc"})
    assert evil.headers["x-request-id"].startswith("req_")
