"""The platform's cost per request: the whole pipeline, unmetered against metered with limits.

    .venv/bin/python bench/pipeline.py [--rounds 5] [--requests 200] [--concurrency 16]

One real server process with the scripted fake engine (`KIMISERVE_ENGINE=fake`, no model work,
so the platform is all that is measured), two accounts side by side in the same run:
- unmetered: no balance, no limits (the self-hosted single-user default);
- metered: a balance (credit held before and settled after every request, in SQLite) and every
  kind of rate limit set on the key and the account (high enough never to refuse).
Rounds alternate the two; each round sends `--requests` sync Runware textInference tasks,
`--concurrency` at a time, over HTTP keep-alive. Prints requests/s per round and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.serverproc import ServerProcess, cli, create_key

LIMITS = ("--rpm", "1000000", "--tpm", "1000000000", "--concurrency", "1000")


def task() -> dict[str, object]:
    return {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "kimi-k2.6",
        "messages": [{"role": "user", "content": "one two three four five six seven eight"}],
        "settings": {"maxTokens": 8},
    }


async def round_rps(base_url: str, key: str, requests: int, concurrency: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=60
    ) as http:
        left = requests

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                reply = await http.post("/v1", json=[task()])
                if reply.status_code != 200:
                    raise SystemExit(f"request refused: {reply.status_code} {reply.text}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return requests / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    free = create_key(data_dir, "unmetered", "bench")
    metered = create_key(data_dir, "metered", "bench", *LIMITS)
    cli(data_dir, "accounts", "top-up", "metered", "1000000")
    cli(data_dir, "accounts", "set-limits", "metered", *LIMITS)
    server = ServerProcess(data_dir, env={"KIMISERVE_ENGINE": "fake", "KIMISERVE_LOG_LEVEL": "warning"})
    server.start()
    try:
        asyncio.run(round_rps(server.base_url, free, 50, args.concurrency))  # warm up
        results: dict[str, list[float]] = {"unmetered": [], "metered": []}
        for r in range(args.rounds):
            order = [("unmetered", free), ("metered", metered)]
            for name, key in order if r % 2 == 0 else reversed(order):
                results[name].append(
                    asyncio.run(round_rps(server.base_url, key, args.requests, args.concurrency))
                )
        print(f"requests/s, {args.requests} sync tasks per round, {args.concurrency} concurrent, fake engine")
        print("| round | unmetered | metered + limits | metered / unmetered |")
        print("|---|---|---|---|")
        for i, (a, b) in enumerate(zip(results["unmetered"], results["metered"], strict=True)):
            print(f"| {i + 1} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
        a, b = statistics.median(results["unmetered"]), statistics.median(results["metered"])
        print(
            f"| median | {a:.1f} | {b:.1f} | {b / a:.2f}x "
            f"(metered costs {100 * (a / b - 1):.1f}% more time) |"
        )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
