"""Stand-in vLLM upstreams as real processes on loopback ports, and small request builders."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from kimiserve.domain.types import Event, GenerationRequest, Message, ToolSpec
from kimiserve.engines.openai_compat import UpstreamConfig, UpstreamEngine
from tests.standin.process import StandinProcess

KIMI = "moonshotai/Kimi-K2.6"
WEATHER = ToolSpec(
    "get_weather",
    "The weather in a city.",
    '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}',
)


@pytest.fixture(scope="module")
def standin() -> Iterator[StandinProcess]:
    proc = StandinProcess("one").start()
    yield proc
    proc.stop()


def config(url: str, **overrides: object) -> UpstreamConfig:
    return UpstreamConfig(url=url, model=KIMI, **{"dialect": "vllm", **overrides})  # type: ignore[arg-type]


@pytest.fixture
async def upstream(standin: StandinProcess) -> AsyncIterator[UpstreamEngine]:
    engine = UpstreamEngine(config(standin.url))
    yield engine
    await engine.aclose()


def ask(
    text: str, images: tuple[str, ...] = (), videos: tuple[str, ...] = (), **fields: object
) -> GenerationRequest:
    message = Message("user", text, images=images, videos=videos)
    return GenerationRequest(model="kimi-k2.6", messages=(message,), **fields)  # type: ignore[arg-type]


async def collect(events: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in events]
