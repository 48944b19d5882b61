"""What budget forcing over the wire costs in latency: the gap between the last reasoning token
and the first answer token, forced (the cut, then a continuation request) against unforced
(the upstream ends its reasoning itself), in one run.

    .venv/bin/python bench/budget.py [--runs 30]

UpstreamEngine (vllm dialect) against the stand-in vLLM as a real process on loopback
(`tests/standin/`): forced = `thinking="low"` with 2,000 reasoning chunks (cut at 256);
unforced = `thinking="medium"` with 200 (under its 1,024). The stand-in answers at once, so the
forced gap is kimiserve's and the HTTP round trip's share of a continuation; a real engine adds
its prefill of the prompt plus the reasoning (mostly a prefix-cache hit).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kimiserve.domain.types import GenerationRequest, Message, ReasoningDelta, TextDelta, ThinkingLevel
from kimiserve.engines.openai_compat import UpstreamConfig, UpstreamEngine
from tests.standin.process import StandinProcess


async def gap_ms(engine: UpstreamEngine, text: str, level: ThinkingLevel) -> float:
    request = GenerationRequest(model="kimi", messages=(Message("user", text),), thinking=level)
    last_reasoning = first_text = 0.0
    async for event in engine.generate(request):
        if isinstance(event, ReasoningDelta):
            last_reasoning = time.perf_counter()
        elif isinstance(event, TextDelta) and not first_text:
            first_text = time.perf_counter()
    return (first_text - last_reasoning) * 1000


async def main(runs: int) -> None:
    standin = StandinProcess("bench-budget").start()
    engine = UpstreamEngine(UpstreamConfig(url=standin.url, model="moonshotai/Kimi-K2.6", dialect="vllm"))
    try:
        forced: list[float] = []
        unforced: list[float] = []
        for _ in range(runs):  # interleaved, so both see the same machine
            forced.append(await gap_ms(engine, "answer me #reason-2000", "low"))
            unforced.append(await gap_ms(engine, "answer me #reason-200", "medium"))
    finally:
        await engine.aclose()
        standin.stop()
    for name, gaps in (("forced (cut + continuation)", forced), ("unforced", unforced)):
        gaps.sort()
        p90 = gaps[int(0.9 * (len(gaps) - 1))]
        p50 = statistics.median(gaps)
        print(f"{name:28} last reasoning -> first answer token: p50 {p50:6.2f} ms, p90 {p90:6.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    asyncio.run(main(parser.parse_args().runs))
