"""Images and videos for a vision upstream (Kimi K2.6 reads both): resolved by kimiserve through
the SSRF-safe fetcher and forwarded to the stand-in vLLM as data-URI content parts, through a
real kimiserve process, with the official openai SDK and over Runware HTTP."""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from tests.engines.upstream.test_server import MODELS
from tests.protocols.upstream.conftest import Front
from tests.serverproc import ServerProcess, create_key
from tests.standin.process import StandinProcess

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
# The first box of an MP4 file (`ftyp`, brand isom): what the magic-byte check reads.
MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(64)


def data_uri(content: bytes, kind: str) -> str:
    return f"data:{kind};base64,{base64.b64encode(content).decode()}"


class _Files(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body, kind = {"/cat.png": (PNG, "image/png"), "/clip.mp4": (MP4, "video/mp4")}.get(
            self.path, (b"not an image", "text/plain")
        )
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def vision(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    """A kimiserve whose Kimi upstream is configured with `vision = true`; URL fetches may reach
    127.0.0.1 (the test's file server) and no other private address."""
    standin = StandinProcess("vision").start()
    tmp: Path = tmp_path_factory.mktemp("vision-front")
    models = tmp / "models.toml"
    models.write_text(
        MODELS.format(url=standin.url, model="moonshotai/Kimi-K2.6", dialect="vllm") + "vision = true\n"
    )
    data = tmp / "front"
    key = create_key(data, name="front")
    env = {
        "KIMISERVE_MODELS_FILE": str(models),
        "KIMISERVE_ENGINE": "fake",
        "KIMISERVE_ALLOW_PRIVATE_HOSTS": "127.0.0.1",
    }
    server = ServerProcess(data, env=env)
    server.start()
    yield Front(server, key, standin)
    server.stop()
    standin.stop()


def parts(body: dict[str, Any], role: str = "user") -> list[dict[str, Any]]:
    content = [m for m in body["messages"] if m["role"] == role][-1]["content"]
    assert isinstance(content, list), content
    return content


async def test_openai_image_and_video_parts_reach_the_upstream_as_data_uris(
    vision: Front, files: str
) -> None:
    async with AsyncOpenAI(
        base_url=f"{vision.server.base_url}/v1", api_key=vision.key, max_retries=0
    ) as client:
        reply = await client.chat.completions.create(
            model="kimi-k2.6",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in these?"},
                        {"type": "image_url", "image_url": {"url": f"{files}/cat.png"}},
                        {"type": "image_url", "image_url": {"url": data_uri(PNG, "image/png")}},
                        {"type": "video_url", "video_url": {"url": f"{files}/clip.mp4"}},  # type: ignore[list-item]
                    ],
                }
            ],
            max_tokens=8,
        )
    assert reply.choices[0].message.content
    sent = parts(vision.last_upstream_body())
    assert sent[0] == {"type": "text", "text": "What is in these?"}
    # the URL was fetched by kimiserve: the upstream gets the bytes, never the client's URL
    assert sent[1] == {"type": "image_url", "image_url": {"url": data_uri(PNG, "image/png")}}
    assert sent[2] == {"type": "image_url", "image_url": {"url": data_uri(PNG, "image/png")}}
    assert sent[3] == {"type": "video_url", "video_url": {"url": data_uri(MP4, "video/mp4")}}


async def test_images_stay_with_their_own_message(vision: Front) -> None:
    async with AsyncOpenAI(
        base_url=f"{vision.server.base_url}/v1", api_key=vision.key, max_retries=0
    ) as client:
        await client.chat.completions.create(
            model="kimi-k2.6",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "first"},
                        {"type": "image_url", "image_url": {"url": data_uri(PNG, "image/png")}},
                    ],
                },
                {"role": "assistant", "content": "a pixel"},
                {"role": "user", "content": "and now?"},
            ],
            max_tokens=4,
        )
    sent = vision.last_upstream_body()["messages"]
    assert [type(m["content"]).__name__ for m in sent] == ["list", "str", "str"]
    assert sent[2]["content"] == "and now?"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://169.254.169.254/latest/meta-data/x.png", "metadata"),  # SSRF: refused where it connects
        ("http://10.1.2.3/x.png", "private"),
        ("{files}/notes.txt", "image"),  # fetched, but not an image
    ],
)
async def test_openai_bad_image_names_its_part(vision: Front, files: str, url: str, says: str) -> None:
    async with AsyncOpenAI(
        base_url=f"{vision.server.base_url}/v1", api_key=vision.key, max_retries=0
    ) as client:
        before = len(vision.standin.stats()["requests"])
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="kimi-k2.6",
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "look"},
                            {"type": "image_url", "image_url": {"url": url.format(files=files)}},
                        ],
                    }
                ],
                max_tokens=4,
            )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "messages[0].content[1].image_url.url"
    assert says in error["message"].lower()
    assert len(vision.standin.stats()["requests"]) == before  # nothing reached the upstream


def test_runware_inputs_images_and_videos_reach_the_upstream(vision: Front, files: str) -> None:
    task = {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "kimi-k2.6",
        "messages": [
            {"role": "user", "content": "Describe the clip."},
            {"role": "assistant", "content": "Which one?"},
            {"role": "user", "content": "This one."},
        ],
        "inputs": {"images": [f"{files}/cat.png"], "videos": [f"{files}/clip.mp4"]},
        "settings": {"maxTokens": 8},
    }
    reply = httpx.post(
        f"{vision.server.base_url}/v1",
        json=[task],
        headers={"Authorization": f"Bearer {vision.key}"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    body = vision.last_upstream_body()
    assert body["messages"][0]["content"] == "Describe the clip."  # inputs belong to the last user turn
    sent = parts(body)
    assert sent == [
        {"type": "text", "text": "This one."},
        {"type": "image_url", "image_url": {"url": data_uri(PNG, "image/png")}},
        {"type": "video_url", "video_url": {"url": data_uri(MP4, "video/mp4")}},
    ]


def test_runware_bad_video_names_its_index(vision: Front, files: str) -> None:
    task = {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "kimi-k2.6",
        "messages": [{"role": "user", "content": "Describe the clip."}],
        "inputs": {"videos": [f"{files}/clip.mp4", f"{files}/cat.png"]},
    }
    reply = httpx.post(
        f"{vision.server.base_url}/v1",
        json=[task],
        headers={"Authorization": f"Bearer {vision.key}"},
        timeout=30,
    )
    assert reply.status_code == 400, reply.text
    [error] = reply.json()["errors"]
    assert error["parameter"] == "inputs.videos.1"
    assert error["code"] == "invalidVideo"
