"""WebSocket sessions under abuse: a revoked key ends live sockets; a reply that echoes bad
stored text never wedges a session; the same for HTTP (no 500 for a stored lone surrogate)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.hostile.clients import new_uuid, post, text_task, ws_exchange
from tests.serverproc import ServerProcess, cli, create_key

PING = json.dumps([{"taskType": "ping", "ping": True}])


@contextmanager
def open_ws(server: ServerProcess, key: str) -> Iterator[ClientConnection]:
    with connect(server.base_url.replace("http://", "ws://") + "/v1", open_timeout=10) as ws:
        ws.send(json.dumps([{"taskType": "authentication", "apiKey": key}]))
        assert "data" in json.loads(ws.recv(timeout=10))
        yield ws


def until_closed(ws: ClientConnection, timeout_s: float = 10) -> tuple[list[dict[str, Any]], int | None]:
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            frames.append(json.loads(ws.recv(timeout=deadline - time.monotonic())))
    except ConnectionClosed as exc:
        return frames, exc.rcvd.code if exc.rcvd else None
    raise AssertionError(f"socket still open: {frames}")


def revoke(data_dir: Path, key: str) -> None:
    cli(data_dir, "keys", "revoke", key.split("-")[1])


def test_revoked_key_ends_an_idle_socket(fake_server: ServerProcess, hostile_dir: Path) -> None:
    key = create_key(hostile_dir, account="alice", name="revoked-idle")
    with open_ws(fake_server, key) as ws:
        revoke(hostile_dir, key)  # no message from the client: the periodic re-check finds it
        frames, code = until_closed(ws)
    assert code == 1008
    [error] = frames[-1]["errors"]
    assert (error["code"], error["taskType"], error["parameter"]) == (
        "invalidApiKey",
        "authentication",
        "apiKey",
    )


def test_revoked_key_refuses_the_next_task(tmp_path: Path) -> None:
    """The check before each task, alone: a server of its own whose periodic re-check (1 s on the
    shared server) cannot end the socket between the revocation and the task, and that keeps no
    key rows (another process's revocation otherwise applies within KIMISERVE_KEY_CACHE_S, as
    tests/platform/test_key_cache.py checks)."""
    key = create_key(tmp_path, account="alice", name="revoked-busy")
    env = {"KIMISERVE_ENGINE": "fake", "KIMISERVE_WS_KEY_RECHECK_S": "600", "KIMISERVE_KEY_CACHE_S": "0"}
    server = ServerProcess(tmp_path, env=env)
    server.start()
    try:
        with open_ws(server, key) as ws:
            revoke(tmp_path, key)
            task = text_task(settings={"maxTokens": 4})
            ws.send(json.dumps([task]))
            frames, code = until_closed(ws)
    finally:
        server.stop()
    errors = [e for f in frames for e in f.get("errors", [])]
    assert any(e["code"] == "invalidApiKey" and e.get("taskUUID") == task["taskUUID"] for e in errors), frames
    assert not any("data" in f and f["data"][0].get("taskUUID") == task["taskUUID"] for f in frames), frames
    assert code == 1008


def _store_bad_task(data_dir: Path, account: str) -> str:
    """A task row holding lone surrogates, as an older server could have stored it."""
    task_uuid = new_uuid()
    with sqlite3.connect(data_dir / "kimiserve.db") as db:
        [(account_id,)] = db.execute("SELECT id FROM accounts WHERE name = ?", (account,)).fetchall()
        results = [
            {"taskType": "textInference", "taskUUID": task_uuid, "status": "success", "text": "a\\ud800b"}
        ]
        db.execute(
            "INSERT INTO tasks (task_uuid, account_id, task_type, delivery, status, request_json,"
            " results_json, error_json, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
            (
                task_uuid,
                account_id,
                "textInference",
                "async",
                "success",
                '{"taskType": "textInference", "zz\\udfff": "\\ud800"}',
                json.dumps(results).replace("\\\\ud800", "\\ud800"),
                time.time(),
                time.time(),
            ),
        )
    return task_uuid


def test_stored_lone_surrogates_are_answered_not_500(
    fake_server: ServerProcess, hostile_dir: Path, keys: dict[str, str]
) -> None:
    task_uuid = _store_bad_task(hostile_dir, "alice")
    for task_type in ("getTaskDetails", "getResponse"):
        body = json.dumps([{"taskType": task_type, "taskUUID": task_uuid}])
        seen = post(fake_server.base_url, "/v1", body, keys["alice"])
        assert seen.status == 200, seen
        assert "\ufffd" in json.dumps(seen.frames, ensure_ascii=False)
        seen = ws_exchange(fake_server.base_url, keys["alice"], [body, PING, body], want=3)
        assert [f.get("data", [{}])[0].get("taskUUID") for f in seen.frames if "data" in f].count(
            task_uuid
        ) == 2
