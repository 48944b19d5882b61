"""Thin clients for the hostile suite: every transport a request can arrive on, each returning
what the client saw (status, content type, decoded JSON frames) so one table runs over all."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

# The seeds live beside the repository (`../shared/seeds/`), wherever it is checked out.
SEED_000 = Path(__file__).resolve().parents[3] / "shared" / "seeds" / "000_cc8609b4c67c77d7.txt"
KIMI = "moonshotai:kimi@2.6"


@dataclass
class Seen:
    """What a client got back: the HTTP status (101 for a WebSocket), and the JSON it carried."""

    status: int
    content_type: str
    frames: list[Any] = field(default_factory=list)  # JSON bodies, SSE data lines or WS frames

    @property
    def errors(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for frame in self.frames:
            if isinstance(frame, dict):
                out += frame.get("errors") or []
                if isinstance(frame.get("error"), dict):
                    out.append(frame["error"])
        return out


def new_uuid() -> str:
    return str(uuid.uuid4())


def text_task(content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {
        "taskType": "textInference",
        "taskUUID": new_uuid(),
        "model": KIMI,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


def _json_or_raise(response: httpx.Response) -> Seen:
    kind = response.headers.get("content-type", "")
    if kind.startswith("text/event-stream"):
        frames = [
            json.loads(line[6:]) if line[6:] != "[DONE]" else "[DONE]"
            for line in response.text.splitlines()
            if line.startswith("data: ")
        ]
        return Seen(response.status_code, kind, frames)
    assert kind.startswith("application/json"), f"{response.status_code} {kind}: {response.text[:200]}"
    return Seen(response.status_code, kind, [response.json()])


def post(base_url: str, path: str, body: bytes | str, key: str | None, timeout_s: float = 30) -> Seen:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    response = httpx.post(base_url + path, content=data, headers=headers, timeout=timeout_s)
    return _json_or_raise(response)


def ws_exchange(base_url: str, key: str, frames: list[str | bytes], want: int, timeout_s: float = 15) -> Seen:
    """Authenticate, send the frames, collect `want` non-pong replies; then prove the socket
    still answers a ping (one bad frame must not wedge it)."""
    url = base_url.replace("http://", "ws://") + "/v1"
    seen = Seen(101, "websocket")
    with connect(url, open_timeout=timeout_s, max_size=None) as ws:
        ws.send(json.dumps([{"taskType": "authentication", "apiKey": key}]))
        auth = json.loads(ws.recv(timeout=timeout_s))
        assert "data" in auth, auth
        for frame in frames:
            ws.send(frame)
        while len(seen.frames) < want:
            reply = json.loads(ws.recv(timeout=timeout_s))
            assert isinstance(reply, dict), reply
            seen.frames.append(reply)
        ws.send(json.dumps([{"taskType": "ping", "ping": True}]))
        while True:
            reply = json.loads(ws.recv(timeout=timeout_s))
            if reply.get("data") == [{"taskType": "ping", "pong": True}]:
                break
            seen.frames.append(reply)
    return seen
