"""The official Runware SDK (0.5.24), unchanged, against a real kimiserve process.

The SDK streams only to `http://localhost:8080` (derived from `ws://localhost:8080`), so this
module runs its own server on port 8080. A few checks need what the SDK does not expose (the
session resume, pings before authentication): those use a raw `websockets` client.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.media.stub import Reply, Stub
from tests.serverproc import ServerProcess, create_key

runware = pytest.importorskip("runware")
types = pytest.importorskip("runware.types")
utils = pytest.importorskip("runware.utils")

URL = "ws://localhost:8080"
MODEL = "moonshotai:kimi@2.6"
PROMPT = "Write one sentence about the sea."
# A 1×1 transparent PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def _wait_for_port_8080(timeout_s: float = 60.0) -> None:
    """Another test run on this machine may hold 8080 for a while: wait, then say so plainly."""
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", 8080))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("port 8080 is busy; the SDK tests need it") from None
        time.sleep(0.5)


@pytest.fixture(scope="module")
def sdk_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sdk-server")


@pytest.fixture(scope="module")
def sdk_key(sdk_dir: Path) -> str:
    return create_key(sdk_dir, name="sdk")


@pytest.fixture(scope="module")
def sdk_server(sdk_dir: Path, sdk_key: str) -> Iterator[ServerProcess]:
    _wait_for_port_8080()
    proc = ServerProcess(sdk_dir, port=8080, env={"KIMISERVE_ALLOW_PRIVATE_HOSTS": "127.0.0.1"})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
async def client(sdk_server: ServerProcess, sdk_key: str) -> AsyncIterator[Any]:
    sdk = runware.Runware(api_key=sdk_key, url=URL)
    await sdk.connect()
    yield sdk
    await sdk.disconnect()


def request(**fields: Any) -> Any:
    fields.setdefault("settings", {"maxTokens": 24, "temperature": 0.8})
    return types.ITextInference(model=MODEL, messages=[{"role": "user", "content": PROMPT}], **fields)


async def test_connect_authenticates_with_a_session(client: Any) -> None:
    assert client.connected()
    uuid.UUID(client._connectionSessionUUID)


async def test_sync_one_result(client: Any) -> None:
    [item] = await client.textInference(request(seed=7))
    assert item.taskType == "textInference"
    assert item.text.strip()
    assert item.finishReason in {"stop", "length"}
    assert item.seed == 7
    assert item.status == "success"
    uuid.UUID(item.taskUUID)


async def test_sync_two_results_with_distinct_seeds(client: Any) -> None:
    items = await client.textInference(request(numberResults=2, seed=500))
    assert len(items) == 2
    assert sorted(i.seed for i in items) == [500, 501]
    assert len({i.taskUUID for i in items}) == 1


async def test_cost_and_usage(client: Any) -> None:
    [item] = await client.textInference(request(includeCost=True, includeUsage=True))
    assert isinstance(item.cost, float) and item.cost > 0
    usage = item.usage
    for name in ("promptTokens", "completionTokens", "totalTokens"):
        value = getattr(usage, name) if not isinstance(usage, dict) else usage[name]
        assert isinstance(value, int) and value > 0


async def test_async_then_get_response_comes_back_quickly(client: Any) -> None:
    ack = await client.textInference(
        request(deliveryMethod="async", numberResults=2, seed=42, settings={"maxTokens": 4})
    )
    assert isinstance(ack, types.IAsyncTaskResponse)
    started = time.monotonic()
    items = await client.getResponse(ack.taskUUID, numberResults=2)
    # Held open while the task ran and answered as it ended: a `processing` reply would have
    # made the SDK sleep 30 s before asking again.
    assert time.monotonic() - started < 25
    assert sorted(i.seed for i in items) == [42, 43]
    assert all(i.text and i.status == "success" for i in items)


async def test_stream_through_the_sdk(client: Any) -> None:
    stream = await client.textInference(
        request(deliveryMethod="stream", includeUsage=True, includeCost=True, seed=3)
    )
    chunks: list[str] = []
    final = None
    async for part in stream:
        if isinstance(part, str):
            chunks.append(part)
        else:
            final = part
    assert chunks, "no text chunks"
    assert final is not None
    assert final.text == "".join(chunks)
    assert final.finishReason in {"stop", "length"}
    usage = final.usage
    completion = usage["completionTokens"] if isinstance(usage, dict) else usage.completionTokens
    assert completion >= 1


async def test_webhook_is_acknowledged_then_posted(client: Any) -> None:
    with Stub(lambda request, index: Reply(200)) as receiver:
        ack = await client.textInference(request(webhookURL=f"{receiver.url}/hook", seed=21))
        assert isinstance(ack, types.IAsyncTaskResponse)
        deadline = time.monotonic() + 120
        while not receiver.snapshot() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        [posted] = receiver.snapshot()
    [item] = json.loads(posted.body)["data"]
    assert item["taskUUID"] == ack.taskUUID and item["seed"] == 21 and item["text"]


async def test_bad_key_is_a_connection_error(sdk_server: ServerProcess) -> None:
    sdk = runware.Runware(api_key="ks-000000000000-not-a-real-key", url=URL)
    await sdk.connect()  # answered, never left waiting
    try:
        assert not sdk.isAuthenticated()
        with pytest.raises(ConnectionError, match="Invalid API key"):
            await sdk.ensureConnection()
    finally:
        await sdk.disconnect()


async def test_bad_parameter_names_it_and_the_task(client: Any) -> None:
    task_uuid = str(uuid.uuid4())
    with pytest.raises(utils.RunwareAPIError) as caught:
        await client.textInference(request(taskUUID=task_uuid, settings={"topP": 1.5}))
    error = caught.value.error_data
    assert error["parameter"] == "settings.topP"
    assert error["taskUUID"] == task_uuid
    assert caught.value.code


async def test_reused_task_uuid_conflicts_and_is_recovered_by_get_response(client: Any) -> None:
    task_uuid = str(uuid.uuid4())
    [first] = await client.textInference(request(taskUUID=task_uuid, seed=11))
    with pytest.raises(utils.RunwareAPIError) as caught:
        await client.textInference(request(taskUUID=task_uuid, seed=99))
    assert caught.value.code == "conflictTaskUUID"
    [again] = await client.getResponse(task_uuid, numberResults=1)
    assert again.text == first.text and again.seed == 11


async def test_image_upload_and_use(client: Any, tmp_path: Path) -> None:
    path = tmp_path / "pixel.png"
    path.write_bytes(PNG)
    uploaded = await client.uploadImage(str(path))
    uuid.UUID(uploaded.imageUUID)
    uuid.UUID(uploaded.taskUUID)
    served = httpx.get(uploaded.imageURL, timeout=10)
    assert served.status_code == 200 and served.content == PNG
    assert served.headers["content-type"] == "image/png"
    # The UUID is accepted in inputs.images; the stand-in model has no vision, and says so.
    with pytest.raises(utils.RunwareAPIError) as caught:
        await client.textInference(request(inputs={"images": [uploaded.imageUUID]}))
    assert caught.value.error_data["parameter"] == "inputs.images"
    assert "image" in caught.value.error_data["message"]


async def test_images_refused_before_any_is_fetched(client: Any) -> None:
    """The served model has no vision: the task is refused before its images are loaded."""
    unknown = str(uuid.uuid4())
    with pytest.raises(utils.RunwareAPIError) as caught:
        await client.textInference(request(inputs={"images": [base64.b64encode(PNG).decode(), unknown]}))
    assert caught.value.error_data["parameter"] == "inputs.images"
    assert caught.value.error_data["code"] == "unsupportedFeature"


async def test_get_task_details(client: Any) -> None:
    task_uuid = str(uuid.uuid4())
    [item] = await client.textInference(request(taskUUID=task_uuid, seed=5))
    details = await client.getTaskDetails(task_uuid)
    assert details.taskUUID == task_uuid
    assert details.taskType == "getTaskDetails"
    [sent] = details.request
    assert getattr(sent, "taskUUID", None) == task_uuid
    [result] = details.response
    assert getattr(result, "text", None) == item.text


# ---- raw socket: what the SDK does not expose -----------------------------------------------


async def _recv(ws: Any, timeout: float = 10.0) -> dict[str, Any]:
    message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert isinstance(message, dict)
    return message


async def _auth(ws: Any, key: str, session: str | None = None) -> str:
    task: dict[str, Any] = {"taskType": "authentication", "apiKey": key}
    if session:
        task["connectionSessionUUID"] = session
    await ws.send(json.dumps([task]))
    reply = await _recv(ws)
    [item] = reply["data"]
    assert set(item) == {"taskType", "connectionSessionUUID"}
    return str(item["connectionSessionUUID"])


@pytest.mark.parametrize("path", ["/", "/v1"])
async def test_ping_before_auth_and_tasks_before_auth(sdk_server: ServerProcess, path: str) -> None:
    async with websockets.connect(f"ws://127.0.0.1:8080{path}") as ws:
        await ws.send(json.dumps([{"taskType": "ping", "ping": True}]))
        assert await _recv(ws, 1.0) == {"data": [{"taskType": "ping", "pong": True}]}
        task_uuid = str(uuid.uuid4())
        await ws.send(json.dumps([{"taskType": "getResponse", "taskUUID": task_uuid}]))
        [error] = (await _recv(ws))["errors"]
        assert error["taskUUID"] == task_uuid and error["code"] == "missingApiKey"


async def test_unknown_session_id_still_authenticates(sdk_server: ServerProcess, sdk_key: str) -> None:
    async with websockets.connect("ws://127.0.0.1:8080/") as ws:
        session = await _auth(ws, sdk_key, str(uuid.uuid4()))
        uuid.UUID(session)


async def test_clean_close_then_resume_gets_buffered_results(sdk_server: ServerProcess, sdk_key: str) -> None:
    task_uuid = str(uuid.uuid4())
    task = {
        "taskType": "textInference",
        "taskUUID": task_uuid,
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "settings": {"maxTokens": 64},
        "seed": 9,
    }
    async with websockets.connect("ws://127.0.0.1:8080/v1") as ws:
        session = await _auth(ws, sdk_key)
        await ws.send(json.dumps([task]))
    # The socket is closed cleanly; the task goes on and its result waits in the session.
    headers = {"Authorization": f"Bearer {sdk_key}"}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body = httpx.post(
            sdk_server.base_url,
            json=[{"taskType": "getTaskDetails", "taskUUID": task_uuid}],
            headers=headers,
            timeout=10,
        ).json()
        if body.get("data") and body["data"][0]["response"]["status"] != "processing":
            break
        await asyncio.sleep(0.2)
    async with websockets.connect("ws://127.0.0.1:8080/v1") as ws:
        assert await _auth(ws, sdk_key, session) == session
        [item] = (await _recv(ws))["data"]
    assert item["taskUUID"] == task_uuid and item["seed"] == 9 and item["text"]


async def test_many_tasks_in_flight_are_answered_by_task_uuid(
    sdk_server: ServerProcess, sdk_key: str
) -> None:
    tasks = [
        {
            "taskType": "textInference",
            "taskUUID": str(uuid.uuid4()),
            "model": MODEL,
            "messages": [{"role": "user", "content": PROMPT}],
            "settings": {"maxTokens": 8 + 4 * i},
            "seed": i,
        }
        for i in range(6)
    ]
    async with websockets.connect("ws://127.0.0.1:8080/v1") as ws:
        await _auth(ws, sdk_key)
        await ws.send(json.dumps(tasks[:3]))
        for task in tasks[3:]:
            await ws.send(json.dumps([task]))
        await ws.send(json.dumps([{"taskType": "ping", "ping": True}]))
        replies = [await _recv(ws, 60) for _ in range(len(tasks) + 1)]
    assert {"data": [{"taskType": "ping", "pong": True}]} in replies
    seeds = {item["taskUUID"]: item["seed"] for r in replies for item in r.get("data", []) if "seed" in item}
    assert seeds == {t["taskUUID"]: t["seed"] for t in tasks}


async def test_idle_socket_is_closed(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path / "idle", env={"KIMISERVE_WS_IDLE_TIMEOUT_S": "1"})
    proc.start()
    try:
        async with websockets.connect(f"ws://127.0.0.1:{proc.port}/") as ws:
            await ws.send(json.dumps([{"taskType": "ping", "ping": True}]))
            await _recv(ws)
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1000 and ws.close_reason == "idle timeout"
    finally:
        proc.stop()
