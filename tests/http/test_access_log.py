"""The access log: one line per request with its id, never a prompt or a key."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from tests.serverproc import ServerProcess, create_key


def test_access_log_has_ids_and_no_secrets(tmp_path: Path) -> None:
    key = create_key(tmp_path)
    server = ServerProcess(tmp_path, env={"KIMISERVE_ENGINE": "fake"})
    server.start()
    marker = f"secret-prompt-{uuid.uuid4().hex}"
    try:
        task = {
            "taskType": "textInference",
            "taskUUID": str(uuid.uuid4()),
            "model": "kimi-k2.6",
            "messages": [{"role": "user", "content": marker}],
            "settings": {"maxTokens": 2},
        }
        reply = httpx.post(
            f"{server.base_url}/v1?token={marker}", json=[task], headers={"Authorization": f"Bearer {key}"}
        )
        assert reply.status_code == 200
        rid = reply.headers["x-request-id"]
    finally:
        server.stop()
    log = server.output()
    [line] = [line for line in log.splitlines() if rid in line]
    assert "kimiserve.access" in line and "POST /v1 200" in line
    assert marker not in log and key not in log
