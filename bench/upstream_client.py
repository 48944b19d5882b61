"""The upstream client alone: httpx against aiohttp, one streamed chat completion per request.

    .venv/bin/python bench/upstream_client.py [--requests 3000]

Starts bench/gateway.py's fast stand-in upstream (16 tokens per answer, streamed with vLLM's
chunk shapes) and, in this process on uvloop, sends `--requests` streamed requests through each
client, at concurrency 1 and 32, both clients alternated twice; each reads the whole SSE body.
Prints the wall time per request: the client's own cost plus the upstream's (the same for both).
This is why the upstream engine (kimiserve/engines/openai_compat/engine.py) uses aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gateway  # bench/gateway.py: the stand-in upstream

POOL = 364  # what bench/gateway.py gives kimiserve's upstream: streams held + 64

Client = tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]  # (one request, close)


def with_httpx(port: int, body: dict[str, object]) -> Client:
    client = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}/v1",
        limits=httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL, keepalive_expiry=4.0),
    )

    async def one() -> None:
        async with client.stream("POST", "/chat/completions", json=body) as response:
            async for _ in response.aiter_bytes():
                pass

    return one, client.aclose


def with_aiohttp(port: int, body: dict[str, object]) -> Client:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=POOL, keepalive_timeout=4.0))
    url = f"http://127.0.0.1:{port}/v1/chat/completions"

    async def one() -> None:
        async with session.post(url, json=body) as response:
            async for _ in response.content.iter_any():
                pass

    return one, session.close


async def measure(port: int, requests: int) -> None:
    body = gateway.chat(gateway.UPSTREAM_MODEL, 16, True)
    makers = {"httpx": with_httpx, "aiohttp": with_aiohttp}
    print("| client | concurrency | µs per request |\n|---|---|---|")
    for name in [*makers, *makers]:
        for concurrency in (1, 32):
            one, close = makers[name](port, body)
            for _ in range(50):  # warm up: connections, imports
                await one()

            async def worker(count: int, one: Callable[[], Awaitable[None]] = one) -> None:
                for _ in range(count):
                    await one()

            started = time.perf_counter()
            await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
            print(f"| {name} | {concurrency} | {elapsed / requests * 1e6:.0f} |", flush=True)
            await close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    upstream, port = gateway.start_upstream(Path(tempfile.mkdtemp(prefix="bench-client-")))
    try:
        uvloop.run(measure(port, args.requests))
    finally:
        gateway.stop(upstream)


if __name__ == "__main__":
    main()
