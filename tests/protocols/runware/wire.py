"""Small helpers for talking Runware over HTTP in tests."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

PROMPT = "Write one sentence about the sea."


def text_task(**overrides: Any) -> dict[str, Any]:
    task: dict[str, Any] = {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "moonshotai:kimi@2.6",
        "messages": [{"role": "user", "content": PROMPT}],
        "settings": {"maxTokens": 24, "temperature": 0.8},
    }
    settings = overrides.pop("settings", None)
    if settings:
        task["settings"] = {**task["settings"], **settings}
    task.update(overrides)
    return task


def post(base_url: str, key: str | None, tasks: list[Any], timeout: float = 120) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{base_url}/v1", json=tasks, headers=headers, timeout=timeout)


def sse_events(response: httpx.Response) -> list[Any]:
    """The parsed `data:` payloads of an SSE response ("[DONE]" kept as the string)."""
    out: list[Any] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


@asynccontextmanager
async def connected_sdk(base_url: str, key: str) -> AsyncIterator[Any]:
    """The official Runware SDK connected over WebSocket to the server at `base_url`."""
    import runware  # here: the modules using this skip themselves when the SDK is missing

    port = base_url.rsplit(":", 1)[1]
    client = runware.Runware(api_key=key, url=f"ws://127.0.0.1:{port}/v1")
    await client.connect()
    try:
        yield client
    finally:
        await client.disconnect()
