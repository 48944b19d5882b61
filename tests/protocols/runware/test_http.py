"""The Runware task API over HTTP, against a real server process on the real model."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid

import httpx
import pytest

from tests.protocols.runware.wire import PROMPT, post, sse_events, text_task
from tests.serverproc import ServerProcess

KIMI_PRICE = (0.48, 2.00, 0.08)
# Longer than the default system prompt SmolLM2's chat template adds when none is given.
PIRATE = "You are a pirate captain of the seven seas. " * 8


def _only_data(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


def test_sync_one_result_with_usage_and_cost(server: ServerProcess, api_key: str) -> None:
    task = text_task(includeUsage=True, includeCost=True, seed=7)
    [item] = _only_data(post(server.base_url, api_key, [task]))
    assert item["taskUUID"] == task["taskUUID"]
    assert item["taskType"] == "textInference"
    assert item["status"] == "success"
    assert item["text"].strip()
    assert item["finishReason"] in {"stop", "length"}
    assert item["seed"] == 7
    usage = item["usage"]
    assert usage["promptTokens"] > 5
    assert 1 <= usage["completionTokens"] <= 24
    assert usage["totalTokens"] == usage["promptTokens"] + usage["completionTokens"]
    assert usage["thinkingTokens"] == 0
    uncached = usage["promptTokens"] - usage["cachedTokens"]
    expected = (
        uncached * KIMI_PRICE[0]
        + usage["cachedTokens"] * KIMI_PRICE[2]
        + usage["completionTokens"] * KIMI_PRICE[1]
    ) / 1e6
    assert abs(item["cost"] - expected) <= 0.5e-6  # charged in whole micro-USD, rounded half up
    for falsy in ("code", "error", "errorId"):
        assert not item.get(falsy)


def test_usage_and_cost_only_when_asked(server: ServerProcess, api_key: str) -> None:
    [item] = _only_data(post(server.base_url, api_key, [text_task()]))
    assert "usage" not in item and "cost" not in item


def test_number_results_three_distinct_seeds(server: ServerProcess, api_key: str) -> None:
    task = text_task(numberResults=3, seed=100)
    items = _only_data(post(server.base_url, api_key, [task]))
    assert [i["seed"] for i in items] == [100, 101, 102]
    assert {i["taskUUID"] for i in items} == {task["taskUUID"]}
    assert len({i["text"] for i in items}) >= 2


def test_random_seeds_are_uint32_and_distinct(server: ServerProcess, api_key: str) -> None:
    items = _only_data(post(server.base_url, api_key, [text_task(numberResults=2)]))
    seeds = [i["seed"] for i in items]
    assert seeds[1] == seeds[0] + 1
    assert all(0 <= s < 2**32 + 1 for s in seeds)


def test_seed_reproducible(server: ServerProcess, api_key: str) -> None:
    settings = {"temperature": 1.2, "maxTokens": 20}
    a = _only_data(post(server.base_url, api_key, [text_task(seed=1234, settings=settings)]))[0]
    b = _only_data(post(server.base_url, api_key, [text_task(seed=1234, settings=settings)]))[0]
    c = _only_data(post(server.base_url, api_key, [text_task(seed=98765, settings=settings)]))[0]
    assert a["text"] == b["text"]
    assert a["text"] != c["text"]


def test_large_seed_is_reported_back(server: ServerProcess, api_key: str) -> None:
    big = 9223372036854775000
    [item] = _only_data(post(server.base_url, api_key, [text_task(seed=big)]))
    assert item["seed"] == big


def test_stop_sequence_ends_generation(server: ServerProcess, api_key: str) -> None:
    settings = {"temperature": 0, "maxTokens": 40}
    [free] = _only_data(post(server.base_url, api_key, [text_task(settings=settings)]))
    words = free["text"].split()
    assert len(words) > 4, free
    stop = words[3]
    [stopped] = _only_data(
        post(server.base_url, api_key, [text_task(settings={**settings, "stopSequences": [stop]})])
    )
    assert stop not in stopped["text"]
    assert stopped["finishReason"] == "stop"
    assert free["text"].startswith(stopped["text"])
    assert stopped["text"] == free["text"][: free["text"].index(stop)]


def test_system_prompt_changes_the_prompt(server: ServerProcess, api_key: str) -> None:
    plain = _only_data(post(server.base_url, api_key, [text_task(includeUsage=True)]))[0]
    system = _only_data(
        post(
            server.base_url,
            api_key,
            [text_task(includeUsage=True, settings={"systemPrompt": PIRATE})],
        )
    )[0]
    assert system["usage"]["promptTokens"] > plain["usage"]["promptTokens"] + 5


def test_stream_chunks_and_terminal(server: ServerProcess, api_key: str) -> None:
    settings = {"temperature": 0.9, "maxTokens": 24}
    task = text_task(deliveryMethod="stream", seed=55, settings=settings, includeUsage=True, includeCost=True)
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1",
        json=[task],
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    terminal = events[-2]
    deltas = events[:-2]
    assert deltas, events
    for chunk in deltas:
        assert chunk["taskUUID"] == task["taskUUID"]
        assert chunk["taskType"] == "textInference"
        assert chunk["finishReason"] is None
        assert set(chunk["delta"]) == {"text"}
    assert terminal["finishReason"] in {"stop", "length"}
    assert terminal["seed"] == 55
    assert terminal["usage"]["completionTokens"] >= 1
    assert isinstance(terminal["cost"], float)
    streamed = "".join(c["delta"]["text"] for c in deltas)
    [sync] = _only_data(post(server.base_url, api_key, [text_task(seed=55, settings=settings)]))
    assert streamed == sync["text"]


def test_stream_bad_key_is_http_401(server: ServerProcess) -> None:
    response = post(server.base_url, "ks-nope-nope", [text_task(deliveryMethod="stream")])
    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == "invalidApiKey"


def test_stream_bad_parameter_is_http_400(server: ServerProcess, api_key: str) -> None:
    task = text_task(deliveryMethod="stream", settings={"temperature": 3})
    response = post(server.base_url, api_key, [task])
    assert response.status_code == 400
    [err] = response.json()["errors"]
    assert err["parameter"] == "settings.temperature"
    assert err["taskUUID"] == task["taskUUID"]


def test_disconnect_mid_stream_cancels(server: ServerProcess, api_key: str) -> None:
    task = text_task(
        deliveryMethod="stream",
        messages=[{"role": "user", "content": "Write a very long story about a dragon, in many chapters."}],
        settings={"maxTokens": 2000, "temperature": 0.8},
    )
    started = time.monotonic()
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1",
        json=[task],
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=60,
    ) as response:
        seen = 0
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen += 1
            if seen >= 3:
                break
    # The task ends as cancelled promptly, long before 2000 tokens could have been produced.
    details = None
    for _ in range(50):
        [details] = _only_data(
            post(server.base_url, api_key, [{"taskType": "getTaskDetails", "taskUUID": task["taskUUID"]}])
        )
        if details["response"]["status"] != "processing":
            break
        time.sleep(0.1)
    assert details is not None and details["response"]["status"] == "error", details
    assert details["response"]["errors"][0]["code"] == "clientDisconnected"
    assert time.monotonic() - started < 10
    db = sqlite3.connect(server.data_dir / "kimiserve.db")
    # The client pays for what it was sent (pipeline policy), and for nothing more.
    [(outcome, completion)] = db.execute(
        "SELECT outcome, completion_tokens FROM usage_records WHERE request_id = ?", (task["taskUUID"],)
    ).fetchall()
    assert outcome == "disconnected" and 0 < completion < 2000
    # The server still serves.
    assert _only_data(post(server.base_url, api_key, [text_task()]))[0]["text"]


def test_async_round_trip(server: ServerProcess, api_key: str) -> None:
    task = text_task(deliveryMethod="async", numberResults=2, seed=3)
    response = post(server.base_url, api_key, [task])
    [ack] = _only_data(response)
    assert ack == {"taskType": "textInference", "taskUUID": task["taskUUID"]}
    items = _only_data(
        post(server.base_url, api_key, [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}])
    )
    assert [i["status"] for i in items] == ["success", "success"]
    assert [i["seed"] for i in items] == [3, 4]
    assert all(i["text"] for i in items)


def test_get_response_foreign_and_unknown(server: ServerProcess, api_key: str, other_key: str) -> None:
    task = text_task()
    _only_data(post(server.base_url, api_key, [task]))
    for key, task_uuid in ((other_key, task["taskUUID"]), (api_key, str(uuid.uuid4()))):
        response = post(server.base_url, key, [{"taskType": "getResponse", "taskUUID": task_uuid}])
        assert response.status_code == 400
        [err] = response.json()["errors"]
        assert err["code"] == "taskNotFound"
        assert err["taskUUID"] == task_uuid


def test_conflicting_task_uuid_runs_once(server: ServerProcess, api_key: str) -> None:
    task = text_task(seed=9)
    [first] = _only_data(post(server.base_url, api_key, [task]))
    again = post(server.base_url, api_key, [text_task(taskUUID=task["taskUUID"])])
    assert again.status_code == 400
    [err] = again.json()["errors"]
    assert err["code"] == "conflictTaskUUID"
    assert err["taskUUID"] == task["taskUUID"]
    db = sqlite3.connect(server.data_dir / "kimiserve.db")
    runs = db.execute(
        "SELECT count(*) FROM usage_records WHERE request_id = ?", (task["taskUUID"],)
    ).fetchone()
    assert runs == (1,)
    [recovered] = _only_data(
        post(server.base_url, api_key, [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}])
    )
    assert recovered["text"] == first["text"]


def test_auth_failures(server: ServerProcess, api_key: str) -> None:
    missing = post(server.base_url, None, [text_task()])
    assert missing.status_code == 401
    assert missing.json()["errors"][0]["code"] == "missingApiKey"
    bad = post(server.base_url, api_key[:-2] + "xx", [text_task()])
    assert bad.status_code == 401
    assert bad.json()["errors"][0]["code"] == "invalidApiKey"
    body_auth = post(server.base_url, None, [{"taskType": "authentication", "apiKey": api_key}, text_task()])
    assert _only_data(body_auth)[0]["text"]
    body_bad = post(server.base_url, None, [{"taskType": "authentication", "apiKey": "wrong"}, text_task()])
    assert body_bad.status_code == 401


def test_revoked_key_is_refused(server: ServerProcess) -> None:
    from tests.serverproc import cli, create_key

    key = create_key(server.data_dir, name="to-revoke")
    assert post(server.base_url, key, [text_task()]).status_code == 200
    key_id = key.split("-")[1]
    cli(server.data_dir, "keys", "revoke", key_id)
    # Another process revoked it: the server's copy of the key's row lasts at most
    # KIMISERVE_KEY_CACHE_S (1 s); tests/platform/test_key_cache.py measures the bound itself.
    deadline = time.monotonic() + 1.5
    while (status := post(server.base_url, key, [text_task()]).status_code) == 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert status == 401


def test_keys_are_stored_hashed(server: ServerProcess, api_key: str) -> None:
    raw = (server.data_dir / "kimiserve.db").read_bytes()
    assert api_key.encode() not in raw
    assert api_key.split("-", 2)[2].encode() not in raw


def test_two_tasks_one_bad(server: ServerProcess, api_key: str) -> None:
    good, bad = text_task(), text_task(settings={"topK": 1000})
    response = post(server.base_url, api_key, [good, bad])
    assert response.status_code == 200
    body = response.json()
    assert [i["taskUUID"] for i in body["data"]] == [good["taskUUID"]]
    [err] = body["errors"]
    assert err["taskUUID"] == bad["taskUUID"]
    assert err["parameter"] == "settings.topK"
    assert err["taskType"] == "textInference"


def test_unknown_model(server: ServerProcess, api_key: str) -> None:
    response = post(server.base_url, api_key, [text_task(model="no-such-model")])
    assert response.status_code == 400
    [err] = response.json()["errors"]
    assert (err["code"], err["parameter"]) == ("invalidModel", "model")


@pytest.mark.parametrize("model", ["moonshotai:kimi@2.6", "moonshotai-kimi-k2-6", "kimi-k2.6"])
def test_kimi_aliases(server: ServerProcess, api_key: str, model: str) -> None:
    assert _only_data(post(server.base_url, api_key, [text_task(model=model)]))[0]["text"]


@pytest.mark.parametrize(
    ("field", "value", "parameter"),
    [
        ("inputs", {"videos": ["https://example.com/a.mp4"]}, "inputs.videos"),
        ("inputs", {"documents": ["https://example.com/a.pdf"]}, "inputs.documents"),
    ],
)
def test_features_the_model_lacks_are_refused_by_name(
    server: ServerProcess, api_key: str, field: str, value: object, parameter: str
) -> None:
    response = post(server.base_url, api_key, [text_task(**{field: value})])
    assert response.status_code == 400
    [err] = response.json()["errors"]
    assert err["parameter"] == parameter


def test_context_too_long_names_max_tokens(server: ServerProcess, api_key: str) -> None:
    response = post(server.base_url, api_key, [text_task(settings={"maxTokens": 1000000})])
    assert response.status_code == 400
    [err] = response.json()["errors"]
    assert err["parameter"] == "settings.maxTokens"


def test_not_an_array(server: ServerProcess, api_key: str) -> None:
    response = httpx.post(
        f"{server.base_url}/v1", content=b"{not json", headers={"Authorization": f"Bearer {api_key}"}
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "invalidJSON"
    response = post(server.base_url, api_key, {"taskType": "ping"})  # type: ignore[arg-type]
    assert response.status_code == 400


def test_results_survive_restart_and_interrupted_tasks_end(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.serverproc import create_key

    key = create_key(tmp_path)
    proc = ServerProcess(tmp_path)
    proc.start()
    try:
        done = text_task(deliveryMethod="async", seed=11)
        post(proc.base_url, key, [done])
        [before] = _only_data(
            post(proc.base_url, key, [{"taskType": "getResponse", "taskUUID": done["taskUUID"]}])
        )
        assert before["status"] == "success", before
        long = text_task(
            deliveryMethod="async",
            messages=[{"role": "user", "content": "Write a very long essay about mountains."}],
            settings={"maxTokens": 3000},
        )
        post(proc.base_url, key, [long])
        proc.stop(kill=True)  # cut off mid-generation
        proc.start()
        [after] = _only_data(
            post(proc.base_url, key, [{"taskType": "getResponse", "taskUUID": done["taskUUID"]}])
        )
        assert after == before
        response = post(proc.base_url, key, [{"taskType": "getResponse", "taskUUID": long["taskUUID"]}])
        [err] = response.json()["errors"]
        assert err["code"] == "taskInterrupted"
        assert err["taskUUID"] == long["taskUUID"]
    finally:
        proc.stop()


def test_get_task_details(server: ServerProcess, api_key: str) -> None:
    task = text_task(seed=5)
    [item] = _only_data(post(server.base_url, api_key, [task]))
    [details] = _only_data(
        post(server.base_url, api_key, [{"taskType": "getTaskDetails", "taskUUID": task["taskUUID"]}])
    )
    assert details["request"] == [task]
    assert details["response"]["data"] == [item]
    assert json.dumps(details)  # serialisable


def test_ping(server: ServerProcess, api_key: str) -> None:
    assert _only_data(post(server.base_url, api_key, [{"taskType": "ping", "ping": True}])) == [
        {"taskType": "ping", "pong": True}
    ]


def test_prompt_is_not_logged(server: ServerProcess, api_key: str) -> None:
    _only_data(post(server.base_url, api_key, [text_task()]))
    assert PROMPT not in server.output()
    assert api_key not in server.output()


def test_serve_banner(server: ServerProcess) -> None:
    out = server.output()
    assert f"listening on http://127.0.0.1:{server.port}" in out
    assert "moonshotai:kimi@2.6" in out and "kimi-k2.6" in out and "moonshotai-kimi-k2-6" in out
    assert "local stand-in" in out
    assert "kimiserve keys create" in out
    assert "WITHOUT authentication" not in out


def test_open_mode_serves_without_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = ServerProcess(tmp_path, extra_args=("--open-mode",))
    proc.start()
    try:
        assert "WITHOUT authentication" in proc.output()
        assert _only_data(post(proc.base_url, None, [text_task()]))[0]["text"]
    finally:
        proc.stop()


def test_context_length_error_names_the_limit_without_other_protocols_names(
    server: ServerProcess, api_key: str
) -> None:
    reply = post(server.base_url, api_key, [text_task(settings={"maxTokens": 30000})])
    (item,) = reply.json()["errors"]
    assert (item["code"], item["parameter"]) == ("contextLengthExceeded", "settings.maxTokens")
    assert "30000 output tokens" in item["message"]
    assert "max_tokens" not in item["message"]
