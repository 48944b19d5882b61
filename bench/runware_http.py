"""Runware HTTP overhead: the server against the embedded engine called directly.

    .venv/bin/python bench/runware_http.py [--rounds 20]

Measured side by side in one run (A/B interleaved, same GGUF, threads, prompt, seed):
- latency of a short sync `textInference` (maxTokens 8) through a real server process, against
  the same generation through `LlamaCppEngine.generate()` in this process;
- tokens/s of one stream (maxTokens 256) through the server's SSE, against the raw engine.
The server is idle while the direct run goes, and the reverse.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kimiserve.domain.types import GenerationRequest, Message, Sampling, Usage
from kimiserve.engines.llamacpp import LlamaCppConfig, LlamaCppEngine
from tests.serverproc import ServerProcess, create_key

PROMPT = "Write a short paragraph about the history of the bicycle."


def task(max_tokens: int, delivery: str) -> dict[str, object]:
    return {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "moonshotai:kimi@2.6",
        "messages": [{"role": "user", "content": PROMPT}],
        "settings": {"maxTokens": max_tokens, "temperature": 0.7},
        "seed": 42,
        "deliveryMethod": delivery,
        "includeUsage": True,
    }


def direct_request(max_tokens: int) -> GenerationRequest:
    return GenerationRequest(
        model="bench",
        messages=(Message(role="user", content=PROMPT),),
        sampling=Sampling(temperature=0.7, seed=42, max_tokens=max_tokens),
    )


async def direct(engine: LlamaCppEngine, max_tokens: int) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = 0
    async for event in engine.generate(direct_request(max_tokens)):
        if isinstance(event, Usage):
            tokens = event.completion_tokens
    return time.perf_counter() - start, tokens


async def via_server(client: httpx.AsyncClient, url: str, max_tokens: int) -> tuple[float, int]:
    start = time.perf_counter()
    response = await client.post(url, json=[task(max_tokens, "sync")])
    response.raise_for_status()
    return time.perf_counter() - start, response.json()["data"][0]["usage"]["completionTokens"]


async def via_stream(client: httpx.AsyncClient, url: str, max_tokens: int) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = 0
    async with client.stream("POST", url, json=[task(max_tokens, "stream")]) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"usage"' in line:
                tokens = json.loads(line[6:])["usage"]["completionTokens"]
    return time.perf_counter() - start, tokens


async def main(rounds: int) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="kimiserve-bench-"))
    key = create_key(data_dir)
    server = ServerProcess(data_dir, env={"KIMISERVE_N_THREADS": "2"})
    server.start()
    engine = LlamaCppEngine(LlamaCppConfig(n_threads=2))
    url = f"{server.base_url}/v1"
    try:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=300) as client:
            await via_server(client, url, 8)  # warm both
            await direct(engine, 8)
            lat_server, lat_direct, tps_server, tps_direct = [], [], [], []
            for _ in range(rounds):
                lat_server.append((await via_server(client, url, 8))[0])
                lat_direct.append((await direct(engine, 8))[0])
            for _ in range(max(3, rounds // 5)):
                seconds, tokens = await via_stream(client, url, 256)
                tps_server.append(tokens / seconds)
                seconds, tokens = await direct(engine, 256)
                tps_direct.append(tokens / seconds)
    finally:
        await engine.aclose()
        server.stop()
    ls, ld = statistics.median(lat_server), statistics.median(lat_direct)
    ts, td = statistics.median(tps_server), statistics.median(tps_direct)
    print(f"short sync (maxTokens 8), median of {rounds}:")
    print(f"  through server  {ls * 1000:8.1f} ms")
    print(f"  engine direct   {ld * 1000:8.1f} ms")
    print(f"  ratio server/direct latency: {ls / ld:.2f}x  (overhead {(ls - ld) * 1000:.1f} ms)")
    print("one stream (maxTokens 256):")
    print(f"  through server SSE {ts:7.1f} tokens/s")
    print(f"  engine direct      {td:7.1f} tokens/s")
    print(f"  ratio server/direct throughput: {ts / td:.3f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    asyncio.run(main(parser.parse_args().rounds))
