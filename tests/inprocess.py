"""The app in this test process under a real uvicorn server, with a scripted engine behind
Kimi's names: for the layers above the engine (limits, money, faults) where the real model's
speed or output is not the point. `services` is the live container, for injecting faults."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from kimiserve.app import create_app
from kimiserve.domain.types import Event, GenerationRequest
from kimiserve.engines.fake import FakeEngine
from kimiserve.services import Services, build_registry
from kimiserve.settings import Settings
from tests.serverproc import free_port


@dataclass
class ProbeEngine(FakeEngine):
    """The fake engine, counting generations started, closed, and the most running at once."""

    started: int = 0
    closed: int = 0
    most_at_once: int = 0

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self.started += 1
        self.most_at_once = max(self.most_at_once, self.started - self.closed)
        try:
            async for event in super().generate(request):
                yield event
        finally:
            self.closed += 1

    async def all_closed(self, timeout_s: float = 3.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.closed == self.started:
                return True
            await asyncio.sleep(0.02)
        return False


@dataclass
class InProcess:
    base_url: str
    data_dir: Path
    engine: ProbeEngine
    services: Services = field(repr=False)
    key: str = ""  # a key the test made for it


def _listener(port: int, send_buffer: int) -> socket.socket:
    """A listening socket whose connections' kernel send buffers are `send_buffer` bytes (Linux
    doubles it; accepted sockets inherit it, and a set size is not grown by autotuning)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


@contextmanager
def serve_in_process(
    data_dir: Path, engine: ProbeEngine | None = None, send_buffer: int | None = None, **settings: object
) -> Iterator[InProcess]:
    """A server on a free port with a ProbeEngine (`engine`, or a new one) serving every model
    name. `send_buffer`: each connection's kernel send buffer, in bytes (small ones make a client
    that does not read fill it within a few KiB instead of MiB)."""
    config = Settings(data_dir=data_dir, engine="fake", port=free_port(), **settings)  # type: ignore[arg-type]
    engine = engine if engine is not None else ProbeEngine()
    built: list[Services] = []

    def swap(services: Services) -> None:
        services.registry = services.admissions.registry = build_registry(config, engine, "probe")
        built.append(services)

    app = create_app(config, on_ready=swap)
    server = uvicorn.Server(uvicorn.Config(app, port=config.port, log_level="warning", lifespan="on"))
    sockets = [_listener(config.port, send_buffer)] if send_buffer is not None else None
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "in-process server did not start"
        time.sleep(0.05)
    try:
        yield InProcess(f"http://127.0.0.1:{config.port}", data_dir, engine, built[0])
    finally:
        server.should_exit = True
        thread.join(timeout=10)
