"""Seed 000's validation table, sent over HTTP to a real server process.

Every rejected case must come back with its `code`, `parameter`, `taskUUID` and status; every
boundary value that must pass must not be refused by validation (features that land in later
work may still be refused by name, never as a validation error).
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.protocols.runware.validation_cases import ACCEPTS, REJECTS, Case
from tests.serverproc import ServerProcess

# Tags of accepted cases that later checks may still refuse, and the parameters they may name:
# an unreachable webhook host, an image that is not uploaded, a feature not served yet.
MAY_BE_REFUSED = {
    "tools": ("tools", "toolChoice"),
    "inputs": ("inputs",),
    "webhook": ("webhookURL",),
    "thinking": ("settings.thinkingLevel",),
    "slow": ("settings.maxTokens",),
}


def _send(server: ServerProcess, key: str, task: object) -> httpx.Response:
    # allow_nan: the table also sends values strict JSON cannot carry (Infinity), as clients may.
    return httpx.post(
        f"{server.base_url}/v1",
        content=json.dumps([task], allow_nan=True),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=120,
    )


@pytest.mark.parametrize("case", REJECTS, ids=lambda c: c.name)
def test_rejected_over_http(server: ServerProcess, api_key: str, case: Case) -> None:
    task = case.task()
    response = _send(server, api_key, task)
    assert response.status_code == case.status, response.text
    [err] = response.json()["errors"]
    assert (err["code"], err.get("parameter")) == (case.code, case.parameter)
    assert err["message"]
    if isinstance(task.get("taskUUID"), str):
        assert err["taskUUID"] == task["taskUUID"]
    if isinstance(task.get("taskType"), str):
        assert err["taskType"] == task["taskType"]


@pytest.mark.parametrize("case", ACCEPTS, ids=lambda c: c.name)
def test_accepted_over_http(server: ServerProcess, api_key: str, case: Case) -> None:
    task = case.task()
    response = _send(server, api_key, task)
    if response.status_code == 200:
        if task.get("deliveryMethod") == "stream":
            assert '"finishReason":"' in response.text
            return
        data = response.json()["data"]
        assert data and all(item["taskUUID"] == task["taskUUID"] for item in data)
        return
    [err] = response.json()["errors"]
    if case.name == "model:other-id":  # valid to the schema; not a model this server serves
        assert (err["code"], err["parameter"]) == ("invalidModel", "model")
        return
    if err["code"] == "contextLengthExceeded":  # valid, but longer than the stand-in's context
        assert err["parameter"] in {"messages", "settings.maxTokens"}, err
        return
    areas = tuple(p for tag in case.tags & MAY_BE_REFUSED.keys() for p in MAY_BE_REFUSED[tag])
    assert areas, response.text
    assert err["parameter"].startswith(areas), err
    assert err["code"] != "unsupportedParameter", err
