"""Two accounts, alice and bob: nothing of one is reachable by the other. Tasks, uploads,
usage, WebSocket sessions, webhooks (signed with the owner's secret only)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from kimiserve.delivery.webhooks import sign
from kimiserve.errors import KimiserveError
from kimiserve.media.resolve import resolve_media
from kimiserve.media.uploads import MediaStore
from kimiserve.services import build_fetcher, open_platform
from kimiserve.settings import Settings
from kimiserve.storage.sql.media import SqlMediaStore
from tests.hostile.clients import Seen, new_uuid, post, text_task, ws_exchange
from tests.hostile.test_websocket import open_ws
from tests.media.stub import Received, Reply, Stub
from tests.serverproc import ServerProcess, cli

PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
    "AAAABJRU5ErkJggg=="
)


def run(server: ServerProcess, key: str, task: dict[str, Any]) -> Seen:
    return post(server.base_url, "/v1", json.dumps([task]), key)


@pytest.fixture(scope="module")
def alice_task(fake_server: ServerProcess, keys: dict[str, str]) -> str:
    task = text_task("alice's secret", settings={"maxTokens": 4})
    assert run(fake_server, keys["alice"], task).status == 200
    return str(task["taskUUID"])


@pytest.mark.parametrize("task_type", ["getResponse", "getTaskDetails"])
@pytest.mark.parametrize("transport", ["http", "websocket"])
def test_tasks(
    fake_server: ServerProcess, keys: dict[str, str], alice_task: str, task_type: str, transport: str
) -> None:
    body = json.dumps([{"taskType": task_type, "taskUUID": alice_task}])
    for who, expect_data in (("alice", True), ("bob", False)):
        if transport == "http":
            seen = post(fake_server.base_url, "/v1", body, keys[who])
        else:
            seen = ws_exchange(fake_server.base_url, keys[who], [body], want=1)
        if expect_data:
            assert "alice's" in json.dumps(seen.frames) or task_type == "getResponse", seen
            assert not seen.errors, seen
        else:
            assert [e["code"] for e in seen.errors] == ["taskNotFound"], seen
            assert "secret" not in json.dumps(seen.frames), seen


async def test_uploads(fake_server: ServerProcess, keys: dict[str, str]) -> None:
    """alice's upload resolves as an input for alice's account only (the served model has no
    vision, so the lookup a vision model's task would make is made here directly)."""
    seen = run(fake_server, keys["alice"], {"taskType": "imageUpload", "taskUUID": new_uuid(), "image": PNG})
    image_uuid = seen.frames[0]["data"][0]["imageUUID"]
    settings = Settings(data_dir=fake_server.data_dir)
    platform = await open_platform(settings)
    fetcher = build_fetcher(settings)
    try:
        alice = await platform.account_store.find_account_by_name("alice")
        bob = await platform.account_store.find_account_by_name("bob")
        assert alice is not None and bob is not None
        media = MediaStore(settings.data_dir / "media", SqlMediaStore(platform.db), fetcher, 1 << 20)
        [image] = await resolve_media(media, alice.id, [image_uuid])
        assert image.data_uri().startswith("data:image/png;base64,")
        with pytest.raises(KimiserveError) as refused:
            await resolve_media(media, bob.id, [image_uuid])
        assert refused.value.parameter == "inputs.images.0"
    finally:
        await fetcher.aclose()
        await platform.aclose()


def test_usage(fake_server: ServerProcess, hostile_dir: Path, keys: dict[str, str]) -> None:
    made = {}
    for who in ("alice", "bob"):
        task = text_task(f"{who} usage", settings={"maxTokens": 4})
        assert run(fake_server, keys[who], task).status == 200
        made[task["taskUUID"]] = who
    with sqlite3.connect(hostile_dir / "kimiserve.db") as db:
        names = dict(db.execute("SELECT id, name FROM accounts").fetchall())
        rows = db.execute("SELECT request_id, account_id FROM usage_records").fetchall()
    for request_id, account_id in rows:
        if request_id in made:
            assert names[account_id] == made[request_id]
    assert {r for r, _ in rows} >= set(made)


def test_sessions(fake_server: ServerProcess, keys: dict[str, str]) -> None:
    with open_ws(fake_server, keys["alice"]) as ws:
        ws.send(json.dumps([{"taskType": "authentication", "apiKey": keys["alice"]}]))
        session = json.loads(ws.recv(timeout=10))["data"][0]["connectionSessionUUID"]
        task = text_task("alice only", settings={"maxTokens": 4})
        ws.send(json.dumps([task]))
    with open_ws(fake_server, keys["bob"]) as ws:  # bob asks for alice's session
        ws.send(
            json.dumps(
                [{"taskType": "authentication", "apiKey": keys["bob"], "connectionSessionUUID": session}]
            )
        )
        reply = json.loads(ws.recv(timeout=10))
        assert reply["data"][0]["connectionSessionUUID"] != session
        ws.send(json.dumps([{"taskType": "ping", "ping": True}]))
        frames = [json.loads(ws.recv(timeout=10))]
        assert frames == [{"data": [{"taskType": "ping", "pong": True}]}], frames  # nothing of alice's


def test_webhooks(fake_server: ServerProcess, hostile_dir: Path, keys: dict[str, str]) -> None:
    secrets = {
        who: cli(hostile_dir, "accounts", "webhook-secret", "--account", who).strip().splitlines()[-1]
        for who in ("alice", "bob")
    }

    def script(request: Received, before: int) -> Reply:
        return Reply(200)

    with Stub(script) as stub:
        task = text_task("hooked", webhookURL=stub.url + "/hook", settings={"maxTokens": 4})
        assert run(fake_server, keys["alice"], task).status == 200
        assert [
            e["code"]
            for e in run(
                fake_server, keys["bob"], {"taskType": "getResponse", "taskUUID": task["taskUUID"]}
            ).errors
        ] == ["taskNotFound"]
        for _ in range(100):
            if stub.snapshot():
                break
            time.sleep(0.1)
        [received] = stub.snapshot()
    headers = received.headers
    stamp = int(headers["webhook-timestamp"])
    assert headers["webhook-signature"] == sign(secrets["alice"], headers["webhook-id"], stamp, received.body)
    assert headers["webhook-signature"] != sign(secrets["bob"], headers["webhook-id"], stamp, received.body)
