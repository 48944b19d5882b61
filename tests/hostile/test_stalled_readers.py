"""Clients that open streams and never read them (issue 21).

The server has N engine sequences: `SlotEngine` holds one of N slots while its generation is
pulled, as an upstream engine holds one of its connections while a stream is unread (the embedded
llama.cpp engine frees its sequence when it has produced everything, but the stream's permit and
admission place stay until it is read). N raw-socket clients send a streaming request each and
read nothing; their connections' send buffers are small (`send_buffer`), so the stall comes after
a few KiB rather than the few MiB loopback buffers hold. Then another account's small request
must complete in its normal time, and each stalled stream's usage row says it was cut and charges
what was produced (no more than what the client had been sent, plus the stream's read-ahead).
The Runware WebSocket, whose tasks never wait on their socket, is checked for the other half:
an unread socket is closed and none of its replies is lost (see its section below).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import websockets

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


# ---- the Runware WebSocket --------------------------------------------------------------------
# A WebSocket task never waits on its socket (replies are whole frames, queued for one sender),
# so an unread socket holds no engine sequence; what must hold is that it is closed once a
# frame's send waits the write timeout, and that none of its replies is lost: each was either
# read before the cut or is handed over when the session is resumed.

TASKS_PER_SOCKET = 16  # each reply ~20 KiB: together far past the buffers (the transport holds 64 KiB)


def _ws_frame(text: str) -> bytes:
    """One masked client text frame (RFC 6455 section 5.2)."""
    payload = text.encode()
    mask = os.urandom(4)
    size = len(payload)
    head = bytes([0x81]) + (
        bytes([0x80 | size])
        if size < 126
        else bytes([0x80 | 126]) + size.to_bytes(2, "big")
        if size < 65536
        else bytes([0x80 | 127]) + size.to_bytes(8, "big")
    )
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _ws_frames(raw: bytes) -> tuple[list[dict[str, Any]], int | None]:
    """The server's (unmasked) frames in `raw`: its JSON text frames, and its close code."""
    frames: list[dict[str, Any]] = []
    at = 0
    while at + 2 <= len(raw):
        opcode, size = raw[at] & 0x0F, raw[at + 1] & 0x7F
        at += 2
        if size == 126:
            size, at = int.from_bytes(raw[at : at + 2], "big"), at + 2
        elif size == 127:
            size, at = int.from_bytes(raw[at : at + 8], "big"), at + 8
        if at + size > len(raw):
            break  # cut mid-frame
        payload, at = raw[at : at + size], at + size
        if opcode == 0x1:
            frames.append(json.loads(payload))
        elif opcode == 0x8:
            return frames, int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
    return frames, None


def _ws_unread(server: InProcess) -> tuple[socket.socket, str]:
    """A raw-socket WebSocket that authenticates, then sends its tasks and reads nothing more.
    (socket, session id)."""
    sock = _connect(server)
    handshake = (
        "GET /v1 HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.sendall(handshake.encode())
    sock.settimeout(10)
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += sock.recv(4096)
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    sock.sendall(_ws_frame(json.dumps([{"taskType": "authentication", "apiKey": server.key}])))
    while not _ws_frames(rest)[0]:
        rest += sock.recv(4096)
    [auth] = _ws_frames(rest)[0]
    return sock, auth["data"][0]["connectionSessionUUID"]


def _ws_task() -> dict[str, Any]:
    return {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "moonshotai:kimi@2.6",
        "messages": [{"role": "user", "content": LONG}],
        "settings": {"maxTokens": WORDS + 1},
    }


def _ws_read_to_close(
    sock: socket.socket, timeout_s: float = 10.0
) -> tuple[list[dict[str, Any]], int | None]:
    """The frames the server sent, up to its close frame or the end of the connection (this
    client never answers the close, so the server may keep the TCP connection a while)."""
    sock.settimeout(timeout_s)
    data = b""
    while True:
        frames, code = _ws_frames(data)
        if code is not None:
            return frames, code
        chunk = sock.recv(65536)
        if not chunk:
            return frames, None
        data += chunk


async def _resumed(server: InProcess, session: str, want: set[str]) -> set[str]:
    """The task UUIDs whose replies a resumed session hands over (until `want` is met)."""
    got: set[str] = set()
    url = server.base_url.replace("http://", "ws://") + "/v1"
    async with websockets.connect(url, max_size=None) as ws:
        task = {"taskType": "authentication", "apiKey": server.key, "connectionSessionUUID": session}
        await ws.send(json.dumps([task]))
        with contextlib.suppress(TimeoutError):
            while not want <= got:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
                got |= {item.get("taskUUID") for item in frame.get("data", [])}
    return got


def _stuck_sockets(caplog: pytest.LogCaptureFixture) -> int:
    return sum("not reading" in r.getMessage() for r in caplog.records if r.name.endswith("runware.ws"))


def test_unread_websockets_are_closed_and_lose_no_reply(
    stall_server: InProcess, caplog: pytest.LogCaptureFixture
) -> None:
    opened = [_ws_unread(stall_server) for _ in range(N)]
    try:
        _check_unread_websockets(stall_server, caplog, opened)
    finally:
        for sock, _ in opened:
            sock.close()


def _check_unread_websockets(
    stall_server: InProcess, caplog: pytest.LogCaptureFixture, opened: list[tuple[socket.socket, str]]
) -> None:
    tasks = [[_ws_task() for _ in range(TASKS_PER_SOCKET)] for _ in opened]
    for (sock, _), batch in zip(opened, tasks, strict=True):
        sock.sendall(_ws_frame(json.dumps(batch)))
    everything = {t["taskUUID"] for batch in tasks for t in batch}
    deadline = time.monotonic() + 30  # every task ran to its end: none waited on its socket
    while not all(usage_rows(stall_server.data_dir, t) for t in everything):
        assert time.monotonic() < deadline, "the tasks of unread sockets never finished"
        time.sleep(0.05)
    assert _small_request_time(stall_server) < NORMAL_S
    while _stuck_sockets(caplog) < N:  # reading any of them sooner would unblock its sender
        assert time.monotonic() < deadline, "the unread sockets were never closed"
        time.sleep(0.05)
    for (sock, session), batch in zip(opened, tasks, strict=True):
        read, code = _ws_read_to_close(sock)  # what it had been sent, then the server's close
        assert code == 1008 or code is None  # the close frame itself may not fit the full buffer
        before = {item["taskUUID"] for frame in read for item in frame.get("data", [])}
        want = {t["taskUUID"] for t in batch}
        assert before < want, "nothing was held back: the buffers did not fill"
        after = asyncio.run(_resumed(stall_server, session, want - before))
        assert want - before <= after, f"replies lost: {want - before - after}"
        for task in batch:
            [row] = usage_rows(stall_server.data_dir, task["taskUUID"])
            assert row["outcome"] == "completed"
