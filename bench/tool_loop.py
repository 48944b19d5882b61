"""What a round of the built-in tools' loop costs the platform, and what the sandbox adds.

    .venv/bin/python bench/tool_loop.py [--requests 40] [--repeats 3]

One in-process server (tests/inprocess.py) with the scripted fake engine, so no model work is
measured. A metered account sends sync Runware tasks one at a time over HTTP keep-alive, whose
script makes the model call a built-in tool in every round but the last:
- `stub`: a tool that returns at once, so a round costs what the loop adds (the engine's check of
  the longer prompt, a hold, a settlement and its usage row, the messages appended);
- `codeInterpreter`: the real bubblewrap sandbox running `print(1)` (skipped without `bwrap`).
Prints the median milliseconds per task for 1, 2, 4 and 8 rounds, and the cost of one more round
(the least-squares slope), per repeat, the repeats alternated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kimiserve.domain.types import Event, TextDelta, ToolCall, ToolCallEvent
from kimiserve.engines.base import Capabilities
from kimiserve.tools.builtin import ToolOutput, ToolRegistry
from tests.inprocess import InProcess, serve_in_process
from tests.platform.support import AdminClient
from tests.serverproc import create_key

ROUNDS = (1, 2, 4, 8)


class Stub:
    name = "codeInterpreter"
    description = "Returns at once."
    parameters: dict[str, Any] = {"type": "object"}  # noqa: RUF012

    def check(self) -> None:
        return None

    async def run(self, arguments: dict[str, Any]) -> ToolOutput:
        return ToolOutput("exit status: 0\nstdout:\n1\n", {"stdout": "1\n"})


def script(rounds: int) -> list[list[Event]]:
    code = json.dumps({"code": "print(1)"})
    calls: list[list[Event]] = [
        [ToolCallEvent(ToolCall(f"c{i}", "codeInterpreter", code))] for i in range(rounds - 1)
    ]
    return [*calls, [TextDelta("done")]]


async def ms_per_task(server: InProcess, key: str, rounds: int, requests: int) -> float:
    server.engine.script = script(rounds)
    server.services.admissions.max_tool_rounds = 8
    times: list[float] = []
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}
    ) as http:
        for _ in range(requests):
            body = {
                "taskType": "textInference",
                "taskUUID": str(uuid.uuid4()),
                "model": "kimi-k2.6",
                "messages": [{"role": "user", "content": "one two three four"}],
                "tools": [{"type": "codeInterpreter"}],
                "settings": {"maxTokens": 64},
            }
            started = time.perf_counter()
            reply = await http.post("/v1", json=[body], timeout=60)
            times.append(time.perf_counter() - started)
            item = reply.json()["data"][0]
            assert len(item.get("builtinTools", [])) == rounds - 1, reply.text
    server.engine.requests.clear()
    return 1000 * statistics.median(times)


def slope(points: list[tuple[int, float]]) -> float:
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


async def main(args: argparse.Namespace) -> None:
    kinds = ["stub", "codeInterpreter"] if shutil.which("bwrap") else ["stub"]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        admin_key = create_key(data_dir, "default", "admin", "--scopes", "all")
        with serve_in_process(data_dir) as server:
            server.engine.capabilities = Capabilities(
                context_length=4096, max_concurrency=64, tools="constrained"
            )
            admin = AdminClient(server, admin_key)
            key = await admin.account_with_key("bench", micros=1_000_000_000)
            await admin.aclose()
            real = server.services.admissions.tools
            print("kind | repeat | " + " | ".join(f"{r} rounds ms" for r in ROUNDS) + " | ms per extra round")
            for repeat in range(1, args.repeats + 1):
                for kind in kinds:
                    server.services.admissions.tools = (
                        ToolRegistry({"codeInterpreter": Stub()}) if kind == "stub" else real
                    )
                    points = [(r, await ms_per_task(server, key, r, args.requests)) for r in ROUNDS]
                    cells = " | ".join(f"{ms:.1f}" for _, ms in points)
                    print(f"{kind} | {repeat} | {cells} | {slope(points):.1f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
