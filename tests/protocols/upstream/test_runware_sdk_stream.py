"""The official Runware SDK (0.5.24) streaming a text task end to end through an upstream engine:
SDK → kimiserve (port 8080: the SDK streams only to `http://localhost:8080`) → the stand-in vLLM.

Its own kimiserve on 8080 (the package's `kimi` front listens elsewhere), whose Kimi model is
the stand-in, so the stream's text, usage and the upstream's side of it can all be checked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engines.upstream.test_server import MODELS
from tests.protocols.runware.test_sdk import _wait_for_port_8080
from tests.serverproc import ServerProcess, create_key
from tests.standin.process import StandinProcess

runware = pytest.importorskip("runware")
types = pytest.importorskip("runware.types")


@pytest.fixture(scope="module")
def front_8080(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, StandinProcess]]:
    standin = StandinProcess("sdk-stream").start()
    tmp: Path = tmp_path_factory.mktemp("sdk-stream")
    models = tmp / "models.toml"
    models.write_text(MODELS.format(url=standin.url, model="moonshotai/Kimi-K2.6", dialect="vllm"))
    data = tmp / "front"
    key = create_key(data, name="sdk-stream")
    _wait_for_port_8080()
    server = ServerProcess(
        data, port=8080, env={"KIMISERVE_MODELS_FILE": str(models), "KIMISERVE_ENGINE": "fake"}
    )
    server.start()
    yield key, standin
    server.stop()
    standin.stop()


@pytest.fixture
async def sdk(front_8080: tuple[str, StandinProcess]) -> AsyncIterator[Any]:
    client = runware.Runware(api_key=front_8080[0], url="ws://localhost:8080")
    await client.connect()
    yield client
    await client.disconnect()


async def test_sdk_streams_an_upstream_answer_with_usage(
    sdk: Any, front_8080: tuple[str, StandinProcess]
) -> None:
    _, standin = front_8080
    prompt = "stream me through the gateway please"
    stream = await sdk.textInference(
        types.ITextInference(
            model="moonshotai:kimi@2.6",
            messages=[types.ITextInferenceMessage(role="user", content=prompt)],
            deliveryMethod="stream",
            includeUsage=True,
            includeCost=True,
        )
    )
    chunks: list[str] = []
    final = None
    async for part in stream:
        if isinstance(part, str):
            chunks.append(part)
        else:
            final = part
    assert len(chunks) > 1, chunks  # streamed in pieces, as the upstream sent them
    assert "".join(chunks) == prompt  # the stand-in echoes the prompt
    assert final is not None and final.text == prompt and final.finishReason == "stop"
    usage = final.usage
    completion = usage["completionTokens"] if isinstance(usage, dict) else usage.completionTokens
    assert completion == len(prompt.split())  # the upstream's usage (one token per word), passed on
    assert isinstance(final.cost, float) and final.cost > 0  # priced from the models file
    sent = standin.stats()["requests"][-1]
    assert sent["stream"] is True and sent["messages"][-1]["content"] == prompt
    assert sent["model"] == "moonshotai/Kimi-K2.6"
