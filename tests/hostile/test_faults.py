"""Faults, on the real model: SIGTERM and SIGKILL mid-stream and mid-task, the database locked
by another process, the data directory's disk full. Each must end with every client told
(a terminal frame, an error, or a closed connection followed by `taskInterrupted` on restart),
nothing left `processing`, nothing charged twice, and no traceback in the log."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.hostile.clients import KIMI, new_uuid, post, text_task
from tests.serverproc import ServerProcess, create_key

LONG = "Count from one to one thousand in words, one number per line:\n"
# Greedy decoding of LONG runs to maxTokens on the bundled model (a sampled one may stop early,
# and a task that ends before the fault is injected tests nothing).
RUNS_LONG = {"maxTokens": 4000, "temperature": 0.0}
GRACE_S = 1.0


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def key(data_dir: Path) -> str:
    return create_key(data_dir, account="faults", name="faults")


def real_server(data_dir: Path, port: int | None = None) -> ServerProcess:
    env = {"KIMISERVE_SHUTDOWN_GRACE_S": str(GRACE_S)}
    if port is not None:
        return ServerProcess(data_dir, port=port, env=env)
    return ServerProcess(data_dir, env=env)


@pytest.fixture
def server(data_dir: Path, key: str) -> Iterator[ServerProcess]:
    proc = real_server(data_dir)
    proc.start()
    yield proc
    proc.stop(kill=True)


def task_rows(data_dir: Path) -> dict[str, tuple[str, dict[str, Any] | None]]:
    with sqlite3.connect(data_dir / "kimiserve.db") as db:
        rows = db.execute("SELECT task_uuid, status, error_json FROM tasks").fetchall()
    return {u: (s, json.loads(e) if e else None) for u, s, e in rows}


def usage_counts(data_dir: Path) -> dict[str, int]:
    with sqlite3.connect(data_dir / "kimiserve.db") as db:
        rows = db.execute("SELECT request_id, count(*) FROM usage_records GROUP BY request_id").fetchall()
    return dict(rows)


class Collector(threading.Thread):
    """A client that reads a whole SSE response (or what the server sent before it went away)."""

    def __init__(self, url: str, body: dict[str, Any], key: str) -> None:
        super().__init__(daemon=True)
        self.url, self.body, self.key = url, body, key
        self.lines: list[str] = []
        self.first = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        headers = {"authorization": f"Bearer {self.key}"}
        try:
            with httpx.stream("POST", self.url, json=self.body, headers=headers, timeout=60) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.lines.append(line[6:])
                        self.first.set()
        except httpx.HTTPError as exc:
            self.error = exc
        finally:
            self.first.set()

    def frames(self) -> list[Any]:
        return [line if line == "[DONE]" else json.loads(line) for line in self.lines]


def start_streams(server: ServerProcess, key: str) -> tuple[Collector, Collector, str]:
    runware_uuid = new_uuid()
    runware = Collector(
        server.base_url + "/v1",
        [text_task(LONG, taskUUID=runware_uuid, deliveryMethod="stream", settings=RUNS_LONG)],  # type: ignore[arg-type]
        key,
    )
    openai = Collector(
        server.base_url + "/v1/chat/completions",
        {
            "model": KIMI,
            "messages": [{"role": "user", "content": LONG}],
            "max_tokens": 4000,
            "ignore_eos": True,
            "stream": True,
        },
        key,
    )
    for client in (runware, openai):
        client.start()
        assert client.first.wait(60), "no first frame"
    return runware, openai, runware_uuid


def start_async(server: ServerProcess, key: str) -> str:
    task_uuid = new_uuid()
    task = text_task(LONG, taskUUID=task_uuid, deliveryMethod="async", settings=RUNS_LONG)
    seen = post(server.base_url, "/v1", json.dumps([task]), key)
    assert seen.status == 200, seen
    return task_uuid


def assert_ended_interrupted(data_dir: Path, *task_uuids: str) -> None:
    rows = task_rows(data_dir)
    assert not [u for u, (status, _) in rows.items() if status == "processing"], rows
    for task_uuid in task_uuids:
        status, error = rows[task_uuid]
        assert status == "error" and error is not None and error["code"] == "taskInterrupted", rows[task_uuid]


def assert_charged_at_most_once(data_dir: Path) -> None:
    counts = usage_counts(data_dir)
    assert all(n <= 1 for n in counts.values()), counts


@pytest.mark.timeout(180)
def test_sigterm_mid_stream_ends_every_stream_and_socket(
    server: ServerProcess, data_dir: Path, key: str
) -> None:
    runware, openai, runware_uuid = start_streams(server, key)
    async_uuid = start_async(server, key)
    sync_uuid = new_uuid()
    sync_seen: list[Any] = []
    sync_task = text_task(LONG, taskUUID=sync_uuid, settings=RUNS_LONG)
    sync = threading.Thread(
        target=lambda: sync_seen.append(post(server.base_url, "/v1", json.dumps([sync_task]), key, 60)),
        daemon=True,
    )
    sync.start()
    ws_uuid = new_uuid()
    ws_url = server.base_url.replace("http://", "ws://") + "/v1"
    with connect(ws_url, open_timeout=10) as ws:
        ws.send(json.dumps([{"taskType": "authentication", "apiKey": key}]))
        assert "data" in json.loads(ws.recv(timeout=10))
        ws.send(json.dumps([text_task(LONG, taskUUID=ws_uuid, settings=RUNS_LONG)]))
        time.sleep(0.5)
        assert server.proc is not None
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        replies = []
        try:
            while True:
                replies.append(json.loads(ws.recv(timeout=15)))
        except Exception as exc:  # the close frame
            close = getattr(exc, "rcvd", None)
        assert any(e.get("taskUUID") == ws_uuid for r in replies for e in r.get("errors", [])), replies
        assert close is not None and close.code == 1001, close
    for client in (runware, openai):
        client.join(30)
        assert client.error is None, client.error
    assert server.proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it caught
    assert time.monotonic() - started < GRACE_S + 8
    terminal = runware.frames()[-1]
    assert (
        terminal["error"]["code"] == "taskInterrupted" and terminal["errors"][0]["taskUUID"] == runware_uuid
    )
    assert openai.frames()[-1] == "[DONE]" and openai.frames()[-2]["error"]["code"] == "task_interrupted"
    sync.join(30)
    [seen] = sync_seen  # a sync request cut off is answered 503, in the protocol's format
    assert seen.status == 503 and seen.errors[0]["code"] == "taskInterrupted", seen
    log = server.output()
    assert "Traceback" not in log and "CancelledError" not in log, log[-3000:]
    server.proc = None
    assert_ended_interrupted(data_dir, runware_uuid, async_uuid, ws_uuid, sync_uuid)
    assert_charged_at_most_once(data_dir)


@pytest.mark.timeout(180)
def test_sigkill_mid_stream_and_task_then_restart(server: ServerProcess, data_dir: Path, key: str) -> None:
    runware, openai, runware_uuid = start_streams(server, key)
    async_uuid = start_async(server, key)
    time.sleep(0.5)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    server.proc = None
    for client in (runware, openai):
        client.join(30)
        assert client.frames()[-1] != "[DONE]"  # cut off: the client saw the connection end
    # The same replica restarted (same host and port, so the same replica id): it ends its
    # previous run's tasks at once, without waiting for their leases to expire.
    restarted = real_server(data_dir, port=server.port)
    restarted.start()
    try:
        seen = post(
            restarted.base_url, "/v1", json.dumps([{"taskType": "getResponse", "taskUUID": async_uuid}]), key
        )
        assert seen.errors and seen.errors[0]["code"] == "taskInterrupted", seen
    finally:
        restarted.stop()
    assert_ended_interrupted(data_dir, runware_uuid, async_uuid)
    assert_charged_at_most_once(data_dir)


@pytest.mark.timeout(120)
def test_database_locked_by_another_process(server: ServerProcess, data_dir: Path, key: str) -> None:
    locker = subprocess.Popen(
        [
            "python3",
            "-c",
            "import sqlite3,sys,time; db=sqlite3.connect(sys.argv[1], isolation_level=None);"
            "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(float(sys.argv[2]))",
            str(data_dir / "kimiserve.db"),
            "8",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        task = text_task("hello", settings={"maxTokens": 4})
        seen = post(server.base_url, "/v1", json.dumps([task]), key, timeout_s=60)
        assert seen.errors, seen  # told, as JSON (post() refuses anything else)
        assert seen.status == 503 and seen.errors[0]["code"] == "serviceUnavailable", seen
    finally:
        locker.wait(30)
        assert locker.stdout is not None
        locker.stdout.close()
    task = text_task("hello", settings={"maxTokens": 4})
    seen = post(server.base_url, "/v1", json.dumps([task]), key)
    assert seen.status == 200, seen
    assert not [u for u, (s, _) in task_rows(data_dir).items() if s == "processing"]


@pytest.mark.timeout(120)
def test_disk_full_on_the_data_directory(tmp_path: Path) -> None:
    data_dir = tmp_path / "tmpfs"
    data_dir.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(data_dir)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        key = create_key(data_dir, account="disk", name="disk")
        proc = ServerProcess(data_dir, env={"KIMISERVE_ENGINE": "fake"})
        proc.log_path = None
        proc.start()
        try:
            with open(data_dir / "filler", "wb", buffering=0) as filler:  # fill what is left
                try:
                    while True:
                        filler.write(b"\0" * 65536)
                except OSError:
                    pass  # unbuffered: nothing is left to flush when the file closes
            image = "data:image/png;base64," + "iVBORw0KGgo" * 20_000
            for task in (
                text_task("hello", settings={"maxTokens": 4}),
                {"taskType": "imageUpload", "taskUUID": new_uuid(), "image": image},
            ):
                seen = post(proc.base_url, "/v1", json.dumps([task]), key)
                assert seen.status == 200 or seen.errors, seen
            (data_dir / "filler").unlink()
            seen = post(
                proc.base_url, "/v1", json.dumps([text_task("hello", settings={"maxTokens": 4})]), key
            )
            assert seen.status == 200, seen
            assert not [u for u, (s, _) in task_rows(data_dir).items() if s == "processing"]
        finally:
            proc.stop()
    finally:
        subprocess.run(["umount", "-l", str(data_dir)], check=False)


def _worker_pids(server_pid: int) -> list[int]:
    """The server's llama.cpp worker process(es): its children running the worker module."""
    children: list[str] = []
    for task in Path(f"/proc/{server_pid}/task").iterdir():  # a child is listed under the thread
        try:  # that started it (a restart comes from another thread), which may have ended
            children += (task / "children").read_text().split()
        except FileNotFoundError:
            continue
    return [
        int(pid)
        for pid in children
        if b"kimiserve.engines.llamacpp.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


@pytest.mark.timeout(180)
def test_engine_worker_killed_mid_stream_and_task(server: ServerProcess, data_dir: Path, key: str) -> None:
    """The engine's worker dies under two streams and an async task: every client is told within
    5 s, the server stays up and serves the next request, nothing stays `processing`, nothing is
    charged (a server-side failure)."""
    runware, openai, runware_uuid = start_streams(server, key)
    async_uuid = start_async(server, key)
    assert server.proc is not None
    [worker] = _worker_pids(server.proc.pid)
    killed = time.monotonic()
    subprocess.run(["kill", "-KILL", str(worker)], check=True)
    for client in (runware, openai):
        client.join(5)
        assert not client.is_alive(), "a stream was not ended within 5 s of the crash"
    assert time.monotonic() - killed < 6
    terminal = runware.frames()[-1]
    assert (
        terminal["errors"][0]["code"] == "inferenceError"
        and terminal["errors"][0]["taskUUID"] == runware_uuid
    )
    assert openai.frames()[-1] == "[DONE]" and openai.frames()[-2]["error"]["type"] == "server_error"
    poll = json.dumps([{"taskType": "getResponse", "taskUUID": async_uuid}])
    seen = post(server.base_url, "/v1", poll, key)
    assert seen.errors and seen.errors[0]["code"] == "inferenceError", seen
    after = post(
        server.base_url, "/v1", json.dumps([text_task("Say hi.", settings={"maxTokens": 4})]), key, 90
    )
    assert after.status == 200, after
    assert _worker_pids(server.proc.pid) not in ([], [worker])  # a new worker serves
    rows = task_rows(data_dir)
    assert not [u for u, (status, _) in rows.items() if status == "processing"], rows
    with sqlite3.connect(data_dir / "kimiserve.db") as db:
        charged = db.execute(
            "SELECT count(*) FROM usage_records WHERE request_id IN (?, ?)", (runware_uuid, async_uuid)
        ).fetchone()
    assert charged == (0,)
