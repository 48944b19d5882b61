"""The hostile-input table: every case over every transport it can arrive on.

Runware: HTTP sync, HTTP async, HTTP stream (SSE), WebSocket; OpenAI: sync and stream.
Each case must be refused (or, at a bound, accepted) with the protocol's own JSON error,
naming the parameter: never a 5xx, never a non-JSON body, never a silent or wedged socket.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.hostile.clients import KIMI, SEED_000, Seen, new_uuid, post, text_task, ws_exchange
from tests.hostile.conftest import BODY_CAP
from tests.serverproc import ServerProcess

BAD = "@@BAD@@"  # replaced by the escape in the JSON text, so Python never has to encode it
SURROGATE = "\\ud800"
NUL = "\\u0000"

# ---- Runware -------------------------------------------------------------------------------

# (name, task with BAD somewhere, the parameter the error must name)
RUNWARE_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("content", text_task(f"hi {BAD}"), "messages.0.content"),
    ("role", {**text_task(), "messages": [{"role": BAD, "content": "x"}]}, "messages.0.role"),
    ("taskUUID", {**text_task(), "taskUUID": BAD}, "taskUUID"),
    ("taskType", {**text_task(), "taskType": BAD}, "taskType"),
    ("model", {**text_task(), "model": BAD}, "model"),
    ("unknown key value", {**text_task(), "zzz": BAD}, "zzz"),
    ("stopSequences", text_task(settings={"stopSequences": [BAD]}), "settings.stopSequences.0"),
    ("systemPrompt", text_task(settings={"systemPrompt": BAD}), "settings.systemPrompt"),
    ("deliveryMethod", text_task(deliveryMethod=BAD), "deliveryMethod"),
    ("webhookURL", text_task(webhookURL=f"http://127.0.0.1/{BAD}"), "webhookURL"),
    ("image", {"taskType": "imageUpload", "taskUUID": new_uuid(), "image": BAD}, "image"),
    ("getTaskDetails", {"taskType": "getTaskDetails", "taskUUID": BAD}, "taskUUID"),
]


def _with_bad(task: dict[str, Any], escape: str, delivery: str | None) -> str:
    if delivery is not None and task.get("taskType") == "textInference" and "deliveryMethod" not in task:
        task = {**task, "deliveryMethod": delivery}
    return json.dumps([task]).replace(BAD, escape)


RUNWARE_TRANSPORTS = ["http-sync", "http-async", "http-stream", "websocket"]


def runware_send(server: ServerProcess, key: str, transport: str, text: str) -> Seen:
    if transport == "websocket":
        return ws_exchange(server.base_url, key, [text], want=1)
    return post(server.base_url, "/v1", text, key)


def assert_runware_refused(seen: Seen, parameter: str | None, status: int = 400) -> dict[str, Any]:
    if seen.status != 101:
        assert seen.status == status, seen
    assert seen.errors, seen
    error = seen.errors[0]
    assert {"code", "message"} <= set(error), error
    if parameter is not None:
        assert error.get("parameter") == parameter, error
    return error


@pytest.mark.parametrize("transport", RUNWARE_TRANSPORTS)
@pytest.mark.parametrize("escape", [SURROGATE, NUL], ids=["surrogate", "nul"])
@pytest.mark.parametrize(("name", "task", "parameter"), RUNWARE_FIELDS, ids=[f[0] for f in RUNWARE_FIELDS])
def test_runware_bad_text_in_every_string_field(
    fake_server: ServerProcess,
    keys: dict[str, str],
    transport: str,
    escape: str,
    name: str,
    task: dict[str, Any],
    parameter: str,
) -> None:
    delivery = {"http-async": "async", "http-stream": "stream"}.get(transport)
    text = _with_bad(
        {**task, "taskUUID": task["taskUUID"] if task["taskUUID"] == BAD else new_uuid()}, escape, delivery
    )
    seen = runware_send(fake_server, keys["alice"], transport, text)
    error = assert_runware_refused(seen, parameter)
    if task["taskUUID"] != BAD:  # routed to its task
        assert error.get("taskUUID") == json.loads(text)[0]["taskUUID"], error


def test_runware_bad_apikey_text_is_refused(fake_server: ServerProcess) -> None:
    text = json.dumps([{"taskType": "authentication", "apiKey": BAD}, text_task()]).replace(BAD, SURROGATE)
    seen = post(fake_server.base_url, "/v1", text, None)
    assert_runware_refused(seen, "apiKey")


# Raw bodies: (name, bytes, expected status, code)
DEEP = b"[" * 100_000 + b"]" * 100_000
RAW_BODIES: list[tuple[str, bytes, int, str]] = [
    ("deep arrays", DEEP, 400, "invalidJSON"),
    ("deep objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, 400, "invalidJSON"),
    ("deep unclosed", b"[" * 100_000, 400, "invalidJSON"),
    ("overlong utf-8", b'[{"taskType":"ping","x":"\xc0\xaf"}]', 400, "invalidJSON"),
    ("encoded surrogate", b'[{"taskType":"ping","x":"\xed\xa0\x80"}]', 400, "invalidJSON"),
    ("stray continuation", b"[\x80]", 400, "invalidJSON"),
    ("not json", b"{bad", 400, "invalidJSON"),
    ("oversize", b"[" + b" " * BODY_CAP + b"]", 413, "payloadTooLarge"),
]


@pytest.mark.parametrize(("name", "body", "status", "code"), RAW_BODIES, ids=[b[0] for b in RAW_BODIES])
def test_runware_http_raw_bodies(
    fake_server: ServerProcess, keys: dict[str, str], name: str, body: bytes, status: int, code: str
) -> None:
    error = assert_runware_refused(post(fake_server.base_url, "/v1", body, keys["alice"]), "body", status)
    assert error["code"] == code


@pytest.mark.parametrize(
    ("name", "body", "status", "code"), RAW_BODIES[:-1], ids=[b[0] for b in RAW_BODIES[:-1]]
)
def test_websocket_raw_frames(
    fake_server: ServerProcess, keys: dict[str, str], name: str, body: bytes, status: int, code: str
) -> None:
    try:  # a text frame where it is valid UTF-8; otherwise a binary frame
        frame: str | bytes = body.decode("utf-8")
    except UnicodeDecodeError:
        frame = body
    seen = ws_exchange(fake_server.base_url, keys["alice"], [frame], want=1)
    assert assert_runware_refused(seen, "body")["code"] == code


def _bound_cases() -> list[tuple[str, float, bool]]:
    """(dotted field, value, valid) at and just past every numeric bound of seed 000."""
    if not SEED_000.exists():  # the schemathesis module says so, as a skip
        return []
    schema = json.loads(SEED_000.read_text())["components"]["schemas"]["RequestBody"]["items"]
    cases: list[tuple[str, float, bool]] = []

    def walk(node: dict[str, Any], path: str) -> None:
        for name, prop in (node.get("properties") or {}).items():
            here = f"{path}.{name}" if path else name
            if prop.get("type") in ("integer", "number"):
                step = 1 if prop["type"] == "integer" else 0.01
                if "minimum" in prop:
                    low = prop["minimum"]
                    valid = "exclusiveMinimum" not in prop or prop["exclusiveMinimum"] < low
                    cases.extend([(here, low, valid), (here, round(low - step, 2), False)])
                if "maximum" in prop and prop["maximum"] < 2**62:
                    high = prop["maximum"]
                    cases.extend([(here, high, True), (here, round(high + step, 2), False)])
                if prop["type"] == "integer":
                    cases.append((here, 1.5, False))
                if prop.get("multipleOf") == 0.01:
                    cases.append((here, 0.005, False))
            walk(prop, here)

    walk(schema, "")
    cases += [("seed", 2**64, False), ("seed", 2**63 - 1, True)]  # seed 000: maximum ≈ 2**63
    return cases


BOUNDS = _bound_cases()


def _set(task: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    *parents, leaf = dotted.split(".")
    node = task
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return task


@pytest.mark.parametrize("transport", ["http-sync", "websocket"])
@pytest.mark.parametrize(("field", "value", "valid"), BOUNDS, ids=[f"{f}={v}" for f, v, _ in BOUNDS])
def test_runware_numbers_at_and_past_bounds(
    fake_server: ServerProcess, keys: dict[str, str], transport: str, field: str, value: float, valid: bool
) -> None:
    task = _set(text_task(settings={"maxTokens": 4}), field, value)
    if field == "settings.minP" or field == "settings.topK":
        task["settings"].pop("topP", None)
    seen = runware_send(fake_server, keys["alice"], transport, json.dumps([task]))
    if valid:
        assert not seen.errors or all(e.get("parameter") != field for e in seen.errors), seen
        assert seen.status in (101, 200), seen
    else:
        error = assert_runware_refused(seen, field)
        assert error["taskUUID"] == task["taskUUID"]


def test_runware_integral_float_is_an_integer(fake_server: ServerProcess, keys: dict[str, str]) -> None:
    task = text_task(settings={"maxTokens": 8.0}, numberResults=1.0)
    seen = post(fake_server.base_url, "/v1", json.dumps([task]), keys["alice"])
    assert seen.status == 200, seen


def test_runware_empty_array_is_nothing_to_do(fake_server: ServerProcess, keys: dict[str, str]) -> None:
    seen = post(fake_server.base_url, "/v1", "[]", keys["alice"])
    assert (seen.status, seen.frames) == (200, [{"data": []}])


# ---- OpenAI --------------------------------------------------------------------------------


def chat(content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": KIMI, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


OPENAI_FIELDS: list[tuple[str, dict[str, Any], str | None]] = [
    ("content", chat(f"hi {BAD}"), "messages[0].content"),
    (
        "content part",
        chat() | {"messages": [{"role": "user", "content": [{"type": "text", "text": BAD}]}]},
        "messages[0].content[0].text",
    ),
    ("model", chat() | {"model": BAD}, "model"),
    ("stop", chat(stop=[BAD]), "stop[0]"),
    ("user", chat(user=BAD), "user"),
    ("unknown key", chat(zzz=BAD), "zzz"),
    ("tool name", chat(tools=[{"type": "function", "function": {"name": BAD}}]), "tools[0].function.name"),
]


def assert_openai_refused(seen: Seen, param: str | None, status: int = 400) -> dict[str, Any]:
    assert seen.status == status, seen
    [body] = seen.frames
    # OpenAI's four fields, plus the request id (the same as the x-request-id header)
    assert set(body["error"]) == {"message", "type", "param", "code", "request_id"}, body
    assert body["error"]["request_id"].startswith("req_"), body
    if param is not None:
        assert body["error"]["param"] == param, body
    return dict(body["error"])


@pytest.mark.parametrize("stream", [False, True], ids=["sync", "stream"])
@pytest.mark.parametrize("escape", [SURROGATE, NUL], ids=["surrogate", "nul"])
@pytest.mark.parametrize(("name", "body", "param"), OPENAI_FIELDS, ids=[f[0] for f in OPENAI_FIELDS])
def test_openai_bad_text_in_every_string_field(
    fake_server: ServerProcess,
    keys: dict[str, str],
    stream: bool,
    escape: str,
    name: str,
    body: dict[str, Any],
    param: str | None,
) -> None:
    text = json.dumps({**body, "stream": stream}).replace(BAD, escape)
    seen = post(fake_server.base_url, "/v1/chat/completions", text, keys["alice"])
    error = assert_openai_refused(seen, param)
    assert error["code"] == "invalid_value"


@pytest.mark.parametrize(("name", "body", "status", "code"), RAW_BODIES, ids=[b[0] for b in RAW_BODIES])
def test_openai_raw_bodies(
    fake_server: ServerProcess, keys: dict[str, str], name: str, body: bytes, status: int, code: str
) -> None:
    seen = post(fake_server.base_url, "/v1/chat/completions", body, keys["alice"])
    snake = {"invalidJSON": "invalid_json", "payloadTooLarge": "payload_too_large"}[code]
    assert assert_openai_refused(seen, None, status)["code"] == snake


OPENAI_BOUNDS: list[tuple[str, Any, bool]] = [
    ("temperature", 0, True),
    ("temperature", 2, True),
    ("temperature", 2.01, False),
    ("temperature", -0.01, False),
    ("top_p", 1, True),
    ("top_p", 1.01, False),
    ("frequency_penalty", -2, True),
    ("frequency_penalty", -2.01, False),
    ("presence_penalty", 2, True),
    ("presence_penalty", 2.01, False),
    ("n", 4, True),
    ("n", 5, False),
    ("n", 0, False),
    ("max_tokens", 1, True),
    ("max_tokens", 0, False),
    ("seed", 2**63 - 1, True),
    ("seed", 2**63, False),
    ("top_logprobs", 21, False),
]


@pytest.mark.parametrize("stream", [False, True], ids=["sync", "stream"])
@pytest.mark.parametrize(
    ("field", "value", "valid"), OPENAI_BOUNDS, ids=[f"{f}={v}" for f, v, _ in OPENAI_BOUNDS]
)
def test_openai_numbers_at_and_past_bounds(
    fake_server: ServerProcess, keys: dict[str, str], stream: bool, field: str, value: Any, valid: bool
) -> None:
    seen = post(
        fake_server.base_url,
        "/v1/chat/completions",
        json.dumps(chat(**{field: value}, stream=stream)),
        keys["alice"],
    )
    if valid:
        assert seen.status == 200, seen
        if stream:
            assert seen.frames[-1] == "[DONE]"
    else:
        assert_openai_refused(seen, field)
