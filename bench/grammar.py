"""JSONSchemaBench through the engine's grammar path: compile time, mask time, masked decoding.

    .venv/bin/python bench/grammar.py --data DIR [--folders Github_easy,Github_medium,Kubernetes]
                                      [--walk 32] [--decode 40] [--tokens 64] [--concurrency 8]

DIR holds JSONSchemaBench's `data/` folders (github:guidance-ai/jsonschemabench). For every
schema of each folder:

1. compile it exactly as the engine does (`GrammarCache`: llguidance, the engine's JSON options
   and limits, the compile budget): time, and whether it compiled or was refused with a 400;
2. walk its matcher `--walk` tokens (mask, then a random allowed token): mask time p50/p99, and
   any error — the grammar half of "decodes without a crash", for every schema.

Then `--decode` schemas per folder (a fixed random sample) run through a real `LlamaCppEngine`
(worker process) with `--tokens` max tokens, `--concurrency` at a time: masked output tokens/s,
worker crashes (target 0), outputs that parse and that validate (`jsonschema`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import llama_cpp as llama
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llguidance.llamacpp import lltokenizer_from_vocab

from kimiserve.domain.types import (
    Constraint,
    Finished,
    GenerationRequest,
    Message,
    Sampling,
    TextDelta,
    Usage,
)
from kimiserve.engines.llamacpp import LlamaCppConfig, LlamaCppEngine, default_model_path
from kimiserve.engines.llamacpp.grammar import GrammarCache
from kimiserve.errors import GrammarError, KimiserveError


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def load(folder: Path) -> list[tuple[str, str]]:
    return [(p.name, p.read_text()) for p in sorted(folder.glob("*.json"))]


def compile_and_walk(schemas: list[tuple[str, str]], steps: int, seed: int) -> dict[str, Any]:
    params = llama.llama_model_default_params()
    params.vocab_only = True
    model = llama.llama_model_load_from_file(default_model_path().encode(), params)
    vocab = llama.llama_model_get_vocab(model)
    n_vocab = llama.llama_vocab_n_tokens(vocab)
    eog = [t for t in range(n_vocab) if llama.llama_vocab_is_eog(vocab, t)]
    cache = GrammarCache(lltokenizer_from_vocab(vocab, eos_token=eog), size=len(schemas) + 1)
    rng = random.Random(seed)
    mask = np.zeros((n_vocab + 31) // 32, dtype=np.int32)
    compile_ms: list[float] = []
    mask_us: list[float] = []
    refused: list[str] = []
    walk_errors: list[str] = []
    for name, text in schemas:
        started = time.perf_counter()
        try:
            grammar = cache.get(Constraint(json_schema=text))
        except GrammarError as exc:
            refused.append(f"{name}: {exc.message[:120]}")
            continue
        finally:
            compile_ms.append((time.perf_counter() - started) * 1000)
        assert grammar is not None
        matcher = grammar.matcher()
        for _ in range(steps):
            started = time.perf_counter()
            matcher.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes)
            mask_us.append((time.perf_counter() - started) * 1e6)
            allowed = np.flatnonzero(np.unpackbits(mask.view(np.uint8), bitorder="little")[:n_vocab])
            allowed = allowed[~np.isin(allowed, eog)]
            if matcher.is_stopped() or len(allowed) == 0:
                break
            if not matcher.consume_token(int(rng.choice(list(allowed)))):
                walk_errors.append(f"{name}: {matcher.get_error()[:120]}")
                break
        if matcher.is_error() and not walk_errors[-1:]:
            walk_errors.append(f"{name}: {matcher.get_error()[:120]}")
    cache.close()
    llama.llama_model_free(model)
    return {
        "compile_ms": compile_ms,
        "mask_us": mask_us,
        "refused": refused,
        "walk_errors": walk_errors,
    }


async def decode(
    engine: LlamaCppEngine, schemas: list[tuple[str, str]], tokens: int, concurrency: int
) -> dict[str, Any]:
    import jsonschema  # type: ignore[import-untyped]

    gate = asyncio.Semaphore(concurrency)
    stats = {"tokens": 0, "parsed": 0, "valid": 0, "refused": 0, "failed": 0, "length": 0}

    async def one(i: int, text: str) -> None:
        request = GenerationRequest(
            model="bench",
            messages=(Message("user", "Produce an example JSON document for this schema:\n" + text[:1500]),),
            sampling=Sampling(temperature=0.8, seed=i, max_tokens=tokens),
            constraint=Constraint(json_schema=text),
        )
        async with gate:
            out: list[str] = []
            try:
                async for event in engine.generate(request):
                    if isinstance(event, TextDelta):
                        out.append(event.text)
                    elif isinstance(event, Usage):
                        stats["tokens"] += event.completion_tokens
                    elif isinstance(event, Finished):  # JSON closed early at the budget: length too
                        stats["length"] += event.reason == "length"
            except GrammarError:
                stats["refused"] += 1
                return
            except KimiserveError:
                stats["failed"] += 1
                return
        try:
            value = json.loads("".join(out))
        except ValueError:
            return
        stats["parsed"] += 1
        try:
            jsonschema.validate(value, json.loads(text))
            stats["valid"] += 1
        except Exception:  # jsonschema errors, and schemas jsonschema itself cannot handle
            pass

    started = time.perf_counter()
    await asyncio.gather(*(one(i, text) for i, (_, text) in enumerate(schemas)))
    stats["seconds"] = time.perf_counter() - started
    return stats


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--folders", default="Github_easy,Github_medium,Kubernetes")
    parser.add_argument("--walk", type=int, default=32)
    parser.add_argument("--decode", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folders = args.folders.split(",")
    engine = None
    if args.decode:
        config = LlamaCppConfig(
            n_ctx=args.concurrency * 1024, max_sequences=args.concurrency, n_threads=args.threads
        )
        engine = await asyncio.to_thread(LlamaCppEngine, config)
    rows = []
    for folder in folders:
        schemas = load(args.data / folder)
        grammar = await asyncio.to_thread(compile_and_walk, schemas, args.walk, args.seed)
        sample = random.Random(args.seed).sample(schemas, min(args.decode, len(schemas)))
        decoded = await decode(engine, sample, args.tokens, args.concurrency) if engine else None
        compiled = len(schemas) - len(grammar["refused"])
        row = (
            f"| {folder} | {len(schemas)} | {compiled} ({100 * compiled / len(schemas):.1f}%) | "
            f"{len(grammar['refused'])} | {statistics.median(grammar['compile_ms']):.2f} / "
            f"{percentile(grammar['compile_ms'], 99):.1f} | {percentile(grammar['mask_us'], 50):.0f} / "
            f"{percentile(grammar['mask_us'], 99):.0f} | {len(grammar['walk_errors'])} |"
        )
        if decoded is not None:
            row += (
                f" {len(sample)}: {decoded['failed']} failed, {decoded['refused']} refused, "
                f"{decoded['parsed']} parse, {decoded['valid']} validate, {decoded['length']} length | "
                f"{decoded['tokens'] / decoded['seconds']:.1f} |"
            )
        rows.append(row)
        print(row, flush=True)
        for line in grammar["refused"][:5] + grammar["walk_errors"][:5]:
            print("   ", line)
    restarts = engine.restarts if engine else 0
    if engine is not None:
        await engine.aclose()
    print()
    print(
        "| folder | schemas | compiled | refused (400) | compile ms p50 / p99 | mask µs p50 / p99 | "
        "walk errors | decoded (engine) | masked tokens/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    print(f"\nworker restarts during the run: {restarts}")


if __name__ == "__main__":
    asyncio.run(main())
