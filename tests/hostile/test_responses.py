"""The hostile-input guarantees on the Responses API routes (issue 19): bad text in every string
field, raw bodies (depth, encoding, size), numbers at and past their bounds, scopes, and another
account's stored response (404 on every route). Refusals are OpenAI's JSON error naming the
param: never a 5xx, never a non-JSON body."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.hostile.clients import KIMI, Seen, post
from tests.hostile.test_input_table import BAD, NUL, RAW_BODIES, SURROGATE, assert_openai_refused
from tests.serverproc import ServerProcess, create_key

PATH = "/v1/responses"


def body(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": KIMI, "input": text, "max_output_tokens": 4, **extra}


def items(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(parts)}]


FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("input", body(f"hi {BAD}"), "input"),
    (
        "input_text",
        body() | {"input": items({"type": "input_text", "text": BAD})},
        "input[0].content[0].text",
    ),
    ("instructions", body(instructions=BAD), "instructions"),
    ("model", body() | {"model": BAD}, "model"),
    (
        "function_call_output",
        body() | {"input": [{"type": "function_call_output", "call_id": "c", "output": BAD}]},
        "input[0].output",
    ),
    ("tool name", body(tools=[{"type": "function", "name": BAD}]), "tools[0].name"),
    ("metadata", body(metadata={"k": BAD}), "metadata.k"),
    ("previous_response_id", body(previous_response_id=BAD), "previous_response_id"),
    ("unknown key", body(zzz=BAD), "zzz"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["sync", "stream"])
@pytest.mark.parametrize("escape", [SURROGATE, NUL], ids=["surrogate", "nul"])
@pytest.mark.parametrize(("name", "request_body", "param"), FIELDS, ids=[f[0] for f in FIELDS])
def test_bad_text_in_every_string_field(
    fake_server: ServerProcess,
    keys: dict[str, str],
    stream: bool,
    escape: str,
    name: str,
    request_body: dict[str, Any],
    param: str,
) -> None:
    text = json.dumps({**request_body, "stream": stream}).replace(BAD, escape)
    error = assert_openai_refused(post(fake_server.base_url, PATH, text, keys["alice"]), param)
    assert error["code"] == "invalid_value"


@pytest.mark.parametrize(("name", "raw", "status", "code"), RAW_BODIES, ids=[b[0] for b in RAW_BODIES])
def test_raw_bodies(
    fake_server: ServerProcess, keys: dict[str, str], name: str, raw: bytes, status: int, code: str
) -> None:
    seen = post(fake_server.base_url, PATH, raw, keys["alice"])
    snake = {"invalidJSON": "invalid_json", "payloadTooLarge": "payload_too_large"}[code]
    assert assert_openai_refused(seen, None, status)["code"] == snake


def test_deep_input_items_are_refused_not_crashed(fake_server: ServerProcess, keys: dict[str, str]) -> None:
    deep = '{"a": ' * 20_000 + '"x"' + "}" * 20_000
    raw = f'{{"model": "{KIMI}", "input": [{{"role": "user", "content": [{deep}]}}]}}'
    seen = post(fake_server.base_url, PATH, raw, keys["alice"])
    assert assert_openai_refused(seen, None)["code"] == "invalid_json"


BOUNDS: list[tuple[str, Any, bool]] = [
    ("temperature", 2, True),
    ("temperature", 2.01, False),
    ("temperature", -0.01, False),
    ("top_p", 1, True),
    ("top_p", 1.01, False),
    ("max_output_tokens", 1, True),
    ("max_output_tokens", 0, False),
    ("top_logprobs", 21, False),
    ("metadata", {f"k{i}": "v" for i in range(17)}, False),
]


@pytest.mark.parametrize(
    ("field", "value", "valid"), BOUNDS, ids=[f"{f}={str(v)[:12]}" for f, v, _ in BOUNDS]
)
def test_numbers_at_and_past_bounds(
    fake_server: ServerProcess, keys: dict[str, str], field: str, value: Any, valid: bool
) -> None:
    seen = post(fake_server.base_url, PATH, json.dumps(body(store=False, **{field: value})), keys["alice"])
    if valid:
        assert seen.status == 200, seen
    else:
        assert_openai_refused(seen, field)


def _request(server: ServerProcess, method: str, path: str, key: str) -> Seen:
    response = httpx.request(
        method, server.base_url + path, headers={"authorization": f"Bearer {key}"}, timeout=30
    )
    assert response.headers["content-type"].startswith("application/json"), response.text
    return Seen(response.status_code, response.headers["content-type"], [response.json()])


@pytest.fixture(scope="module")
def alices_response(fake_server: ServerProcess, keys: dict[str, str]) -> str:
    seen = post(fake_server.base_url, PATH, json.dumps(body("alice's secret")), keys["alice"])
    assert seen.status == 200, seen
    return str(seen.frames[0]["id"])


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", ""), ("DELETE", ""), ("GET", "/input_items")],
    ids=["get", "delete", "input_items"],
)
def test_another_accounts_response_is_not_found(
    fake_server: ServerProcess, keys: dict[str, str], alices_response: str, method: str, suffix: str
) -> None:
    seen = _request(fake_server, method, f"{PATH}/{alices_response}{suffix}", keys["bob"])
    assert seen.status == 404 and "alice" not in json.dumps(seen.frames), seen
    # alice still has it
    assert _request(fake_server, "GET", f"{PATH}/{alices_response}", keys["alice"]).status == 200


def test_another_accounts_response_cannot_be_continued(
    fake_server: ServerProcess, keys: dict[str, str], alices_response: str
) -> None:
    seen = post(
        fake_server.base_url, PATH, json.dumps(body(previous_response_id=alices_response)), keys["bob"]
    )
    assert_openai_refused(seen, "previous_response_id", 404)


def test_a_runware_task_is_not_a_response(fake_server: ServerProcess, keys: dict[str, str]) -> None:
    from tests.hostile.clients import text_task

    task = text_task("a runware task", settings={"maxTokens": 4})
    assert post(fake_server.base_url, "/v1", json.dumps([task]), keys["alice"]).status == 200
    assert _request(fake_server, "GET", f"{PATH}/{task['taskUUID']}", keys["alice"]).status == 404


def test_scopes(fake_server: ServerProcess, hostile_dir: Any, alices_response: str) -> None:
    reader = create_key(hostile_dir, "alice", "reader", "--scopes", "tasks:read")
    runner = create_key(hostile_dir, "alice", "runner", "--scopes", "inference")
    refused = post(fake_server.base_url, PATH, json.dumps(body()), reader)
    assert assert_openai_refused(refused, "scope", 403)["type"] == "permission_error"
    for method, suffix in (("GET", ""), ("DELETE", ""), ("GET", "/input_items")):
        seen = _request(fake_server, method, f"{PATH}/{alices_response}{suffix}", runner)
        assert seen.status == 403, seen
    assert _request(fake_server, "GET", f"{PATH}/{alices_response}", reader).status == 200


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "order=sideways"])
def test_input_items_query_bounds(
    fake_server: ServerProcess, keys: dict[str, str], alices_response: str, query: str
) -> None:
    seen = _request(fake_server, "GET", f"{PATH}/{alices_response}/input_items?{query}", keys["alice"])
    assert seen.status == 400 and seen.frames[0]["error"]["param"] == query.split("=")[0], seen


CASES_PER_MODE = 60


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_from_our_own_document_never_500s(
    fake_server: ServerProcess, keys: dict[str, str], mode: str
) -> None:
    """Bodies generated from /openapi.json's ResponsesRequest (the wire model itself)."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as fixed_seed
    from schemathesis import GenerationMode
    from schemathesis.core import NOT_SET

    document = httpx.get(fake_server.base_url + "/openapi.json", timeout=30).json()
    operation = schemathesis.openapi.from_dict(document)[PATH]["POST"]
    statuses: dict[int, int] = {}
    errors: list[str] = []
    client = httpx.Client(base_url=fake_server.base_url, timeout=30)
    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE

    @fixed_seed(19)
    @settings(
        max_examples=CASES_PER_MODE,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=generation))
    def one(case: Any) -> None:
        if isinstance(case.body, bytes):
            content = case.body
        else:
            value = None if case.body is NOT_SET else case.body
            if mode == "positive" and isinstance(value, dict):  # a served model, so some reach it
                value = {"input": "hi", **value, "model": KIMI}
                value = {**value, "input": value["input"] or "hi"}
            content = json.dumps(value, ensure_ascii=True).encode()
        response = client.post(
            PATH,
            content=content,
            headers={"authorization": f"Bearer {keys['alice']}", "content-type": "application/json"},
        )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code == 400 and len(errors) < 5:
            errors.append(response.json()["error"]["message"][:100])
        assert response.status_code < 500, (content[:500], response.text[:500])
        assert response.headers["content-type"].startswith(("application/json", "text/event-stream"))

    try:
        one()
    finally:
        client.close()
        print(f"schemathesis /v1/responses {mode}: statuses {statuses}, e.g. {errors}")
