"""One real kimiserve process whose Kimi model is the stand-in vLLM (tools native, thinking budgeted)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.engines.upstream.test_server import front
from tests.serverproc import ServerProcess
from tests.standin.process import StandinProcess

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


@dataclass
class Front:
    server: ServerProcess
    key: str
    standin: StandinProcess

    def last_upstream_body(self) -> dict[str, Any]:
        body: dict[str, Any] = self.standin.stats()["requests"][-1]
        return body


@pytest.fixture(scope="package")
def kimi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    standin = StandinProcess("protocol-tools").start()
    server, key = front(tmp_path_factory.mktemp("tools-front"), standin.url, "moonshotai/Kimi-K2.6", "vllm")
    yield Front(server, key, standin)
    server.stop()
    standin.stop()
