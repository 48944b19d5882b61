"""Clients that open streams and never read them (issue 21).

The server has N engine sequences: `SlotEngine` holds one of N slots while its generation is
pulled, as an upstream engine holds one of its connections while a stream is unread (the embedded
llama.cpp engine frees its sequence when it has produced everything, but the stream's permit and
admission place stay until it is read). N raw-socket clients send a streaming request each and
read nothing; their connections' send buffers are small (`send_buffer`), so the stall comes after
a few KiB rather than the few MiB loopback buffers hold. Then another account's small request
must complete in its normal time, and each stalled stream's usage row says it was cut and charges
what was produced (no more than what the client had been sent, plus the stream's read-ahead).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from kimiserve.domain.types import Event, GenerationRequest
from kimiserve.engines.base import Capabilities
from tests.inprocess import InProcess, ProbeEngine, serve_in_process
from tests.protocols.openai.support import MODEL, usage_rows
from tests.serverproc import create_key

N = 2
WORDS = 3000  # ~600 KiB of OpenAI chunks: far past the ~80 KiB the small buffers hold
LONG = " ".join(f"w{i}" for i in range(WORDS))
WRITE_TIMEOUT_S = 1.0
NORMAL_S = 1.0  # a small request's normal time here is tens of milliseconds
READ_AHEAD = 2 * 8 + 4  # produced beyond what reached the socket: two pumps read 8 ahead (http/sse.py)


@dataclass
class SlotEngine(ProbeEngine):
    """The probe engine with N sequences: a generation holds one while it is pulled."""

    slots: int = N
    _free: asyncio.Semaphore | None = field(default=None, repr=False)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Event, None]:
        if self._free is None:
            self._free = asyncio.Semaphore(self.slots)
        async with self._free:
            async for event in super().generate(request):
                yield event


@pytest.fixture(scope="module")
def stall_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    data_dir = tmp_path_factory.mktemp("stalled")
    engine = SlotEngine(capabilities=Capabilities(context_length=8192, max_concurrency=N))
    keys = {name: create_key(data_dir, account=name, name=name) for name in ("staller", "other")}
    with serve_in_process(
        data_dir, engine=engine, send_buffer=4096, stream_write_timeout_s=WRITE_TIMEOUT_S
    ) as server:
        server.key = keys["staller"]
        server.other_key = keys["other"]  # type: ignore[attr-defined]
        yield server


def _connect(server: InProcess) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = server.base_url.removeprefix("http://").split(":")
    sock.connect((host, int(port)))
    return sock


def _post_unread(server: InProcess, path: str, body: Any, request_id: str = "") -> socket.socket:
    """A streaming request sent on a raw socket that then reads nothing."""
    sock = _connect(server)
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {server.key}\r\n"
        f"x-request-id: {request_id or 'req_' + uuid.uuid4().hex}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    return sock


def _read_all(sock: socket.socket, timeout_s: float = 10.0) -> bytes:
    """Everything the server sent, to its end (it closes a cut connection once flushed)."""
    sock.settimeout(timeout_s)
    data = b""
    with sock:
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _events(raw: bytes) -> list[dict[str, Any]]:
    return [
        json.loads(line[len(b"data: ") :])
        for line in raw.split(b"\n")
        if line.startswith(b"data: {")  # a cut chunk's part (chunked encoding) is not one
        and line.endswith(b"}")
    ]


def _small_request_time(server: InProcess) -> float:
    started = time.monotonic()
    reply = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {server.other_key}"},  # type: ignore[attr-defined]
        json={"model": MODEL, "messages": [{"role": "user", "content": "a b c"}], "max_tokens": 3},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    return time.monotonic() - started


def _stall_then_check(server: InProcess, socks: list[socket.socket], request_ids: list[str]) -> list[Any]:
    """Wait for the stalled streams to be cut (their usage rows written: without the cut they
    never are), then the small request must take its normal time; then each stalled client
    reads what it had been sent. Their usage rows, in order."""
    deadline = time.monotonic() + 30  # filling the buffers takes a few seconds on a loaded CPU
    while not all(usage_rows(server.data_dir, r) for r in request_ids):
        assert time.monotonic() < deadline, "the unread streams were never cut"
        time.sleep(0.05)
    assert _small_request_time(server) < NORMAL_S
    return [
        (_read_all(sock), *usage_rows(server.data_dir, r)) for sock, r in zip(socks, request_ids, strict=True)
    ]


def test_unread_openai_streams_are_cut_and_charged_for_what_was_sent(stall_server: InProcess) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": LONG}], "stream": True}
    hexes = [uuid.uuid4().hex for _ in range(N)]
    socks = [_post_unread(stall_server, "/v1/chat/completions", body, f"req_{h}") for h in hexes]
    for raw, row in _stall_then_check(stall_server, socks, [f"chatcmpl-{h}" for h in hexes]):
        events = _events(raw)
        assert events, raw[:500]
        assert b"[DONE]" not in raw  # cut, not finished
        sent = sum(1 for e in events for c in e["choices"] if c["delta"].get("content"))
        assert row["outcome"] == "disconnected"
        assert sent <= row["completion_tokens"] <= sent + READ_AHEAD < WORDS
        assert row["cost_micros"] > 0


def test_unread_runware_streams_are_cut_and_charged_for_what_was_sent(stall_server: InProcess) -> None:
    tasks = [
        {
            "taskType": "textInference",
            "taskUUID": str(uuid.uuid4()),
            "deliveryMethod": "stream",
            "model": "moonshotai:kimi@2.6",
            "messages": [{"role": "user", "content": LONG}],
            "settings": {"maxTokens": WORDS + 1},
        }
        for _ in range(N)
    ]
    socks = [_post_unread(stall_server, "/v1", [task]) for task in tasks]
    for raw, row in _stall_then_check(stall_server, socks, [t["taskUUID"] for t in tasks]):
        sent = sum(1 for e in _events(raw) if e.get("delta", {}).get("text"))
        assert sent > 0, raw[:500]
        assert b"[DONE]" not in raw
        assert row["outcome"] == "disconnected"
        assert sent <= row["completion_tokens"] <= sent + READ_AHEAD < WORDS
