"""The stand-in upstream as a real process on a loopback port: started, killed, restarted."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.serverproc import free_port


@dataclass
class StandinProcess:
    name: str = "standin"
    reasoning_field: str = "reasoning"
    engine: str = "vllm"  # whose continue_final_message rules it follows: "vllm" or "sglang"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 20.0) -> StandinProcess:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.standin.vllm",
                "--port",
                str(self.port),
                "--name",
                self.name,
                "--reasoning-field",
                self.reasoning_field,
                "--engine",
                self.engine,
            ],
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the stand-in exited at start"
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the stand-in did not start")

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=5).json()
        return data

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None
