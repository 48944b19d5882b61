"""webhookURL delivery against a real receiver on loopback and a real server process.

The receiver refuses the first deliveries; the server must retry with the same `webhook-id`,
sign every attempt the Standard Webhooks way, deliver each generation once accepted, and lose
none when it is restarted in the middle.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.media.stub import Received, Reply, Stub
from tests.serverproc import ServerProcess, cli, create_key

MODEL = "moonshotai:kimi@2.6"


def verify(secret: str, request: Received) -> bool:
    """Standard Webhooks verification, written from the spec (not from kimiserve's code)."""
    text = secret.removeprefix("whsec_").translate(str.maketrans("-_", "+/"))
    key = base64.b64decode(text + "=" * (-len(text) % 4))
    msg_id = request.headers["webhook-id"]
    timestamp = request.headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > 300:
        return False
    expected = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + request.body, hashlib.sha256).digest()
    for signature in request.headers["webhook-signature"].split():
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(base64.b64decode(value), expected):
            return True
    return False


class Receiver:
    """Fails every delivery while `down`, and the first `fail_first` of all; then accepts."""

    def __init__(self, fail_first: int = 0, down: bool = False) -> None:
        self.fail_first = fail_first
        self.down = threading.Event()
        if down:
            self.down.set()
        self.stub = Stub(self._answer)

    def _answer(self, request: Received, index: int) -> Reply:
        if self.down.is_set() or index < self.fail_first:
            return Reply(503, b"not now")
        return Reply(204)


def wait_for(condition: Callable[[], bool], timeout_s: float = 150.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.1)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "server"


@pytest.fixture
def key(data_dir: Path) -> str:
    return create_key(data_dir, name="webhooks")


@pytest.fixture
def secret(data_dir: Path, key: str) -> str:
    return cli(data_dir, "accounts", "webhook-secret").strip().splitlines()[-1]


def server(data_dir: Path) -> ServerProcess:
    return ServerProcess(
        data_dir,
        env={
            "KIMISERVE_ALLOW_PRIVATE_HOSTS": "127.0.0.1",
            "KIMISERVE_WEBHOOK_BACKOFF_BASE_S": "0.2",
            "KIMISERVE_WEBHOOK_BACKOFF_MAX_S": "1",
            "KIMISERVE_WEBHOOK_TIMEOUT_S": "5",
        },
    )


def submit(proc: ServerProcess, key: str, url: str, **fields: Any) -> dict[str, Any]:
    task = {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write one sentence about the sea."}],
        "settings": {"maxTokens": 16},
        "webhookURL": url,
        **fields,
    }
    response = httpx.post(
        f"{proc.base_url}/v1", json=[task], headers={"Authorization": f"Bearer {key}"}, timeout=60
    )
    assert response.status_code == 200, response.text
    [ack] = response.json()["data"]
    assert ack == {"taskType": "textInference", "taskUUID": task["taskUUID"]}
    return task


@pytest.fixture
def running(data_dir: Path, key: str) -> Iterator[ServerProcess]:
    proc = server(data_dir)
    proc.start()
    yield proc
    proc.stop()


def by_id(requests: list[Received]) -> dict[str, list[Received]]:
    out: dict[str, list[Received]] = {}
    for r in requests:
        out.setdefault(r.headers["webhook-id"], []).append(r)
    return out


def test_each_generation_delivered_signed_and_retried_with_one_id(
    running: ServerProcess, key: str, secret: str
) -> None:
    with Receiver(fail_first=3).stub as stub:
        task = submit(running, key, f"{stub.url}/hook", numberResults=2, seed=100, includeUsage=True)
        # Both generations accepted: two distinct ids among the requests after the 3 refused.
        wait_for(lambda: len(by_id(stub.snapshot()[3:])) == 2)
        requests = stub.snapshot()
    assert len(requests) >= 5
    assert all(r.method == "POST" and r.path == "/hook" for r in requests)
    assert all(verify(secret, r) for r in requests)
    attempts = by_id(requests)
    assert len(attempts) == 2  # one webhook-id per generation, kept on every retry
    assert any(len(tries) > 1 for tries in attempts.values())
    bodies = []
    for tries in attempts.values():
        assert len({t.body for t in tries}) == 1  # the same message on every attempt
        body = json.loads(tries[-1].body)
        assert set(body) == {"data"}
        bodies.append(body["data"][0])
    assert sorted(b["seed"] for b in bodies) == [100, 101]
    for item in bodies:
        assert item["taskUUID"] == task["taskUUID"]
        assert item["status"] == "success" and item["text"]
        assert item["usage"]["completionTokens"] >= 1
    # Accepted deliveries are not sent again.
    time.sleep(1.5)
    assert len(stub.snapshot()) == len(requests)


def test_a_tampered_body_does_not_verify(running: ServerProcess, key: str, secret: str) -> None:
    with Receiver().stub as stub:
        submit(running, key, f"{stub.url}/hook")
        wait_for(lambda: len(stub.snapshot()) == 1)
        [request] = stub.snapshot()
    assert verify(secret, request)
    forged = Received(request.method, request.path, request.headers, request.body.replace(b"}", b" }", 1))
    assert not verify(secret, forged)
    assert not verify("whsec_" + base64.b64encode(b"another secret").decode(), request)


def test_none_lost_across_a_restart(data_dir: Path, key: str, secret: str) -> None:
    receiver = Receiver(down=True)
    proc = server(data_dir)
    proc.start()
    try:
        with receiver.stub as stub:
            tasks = [submit(proc, key, f"{stub.url}/hook", numberResults=2) for _ in range(3)]
            # Every generation has been attempted (so it sits in the outbox) and refused.
            wait_for(lambda: len(by_id(stub.snapshot())) == 6)
            proc.stop()
            refused = len(stub.snapshot())
            receiver.down.clear()
            proc.start()
            wait_for(lambda: len(by_id(stub.snapshot()[refused:])) == 6)
            requests = stub.snapshot()
    finally:
        proc.stop()
    before, after = by_id(requests[:refused]), by_id(requests[refused:])
    assert set(after) == set(before)  # the same webhook-ids, none lost, none new
    assert all(verify(secret, r) for r in requests)
    seen = {json.loads(tries[-1].body)["data"][0]["taskUUID"] for tries in after.values()}
    assert seen == {t["taskUUID"] for t in tasks}


def test_unsafe_webhook_url_is_refused_up_front(running: ServerProcess, key: str) -> None:
    task = {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "webhookURL": "http://169.254.169.254/latest/meta-data/",
    }
    response = httpx.post(
        f"{running.base_url}/v1", json=[task], headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["parameter"] == "webhookURL" and error["taskUUID"] == task["taskUUID"]
