"""Forced tool calls on JSONSchemaBench schemas through the embedded engine: coverage, compile time, speed.

    .venv/bin/python bench/tools.py --data DIR [--folders Github_easy,Github_medium,Kubernetes]
                                    [--per-folder 20] [--max-tokens 256] [--concurrency 8]

DIR holds JSONSchemaBench's `data/` folders (github:guidance-ai/jsonschemabench). For a fixed
random sample of `--per-folder` schemas per folder, each schema becomes the one tool of a
request with `tool_choice: required`, run through a real `LlamaCppEngine` (worker process):

- coverage: the share of schemas whose call's arguments validate with `jsonschema` (draft from
  `$schema`, formats checked). A schema refused with a 400 (it does not compile within the
  budget, or its prompt does not fit the context), a call cut by `--max-tokens`, and a call
  that does not validate all count as failures, and are listed by kind;
- compile time of the call grammar (tool schema + call wrapper, as `Core.grammar` builds it),
  in process with the engine's `GrammarCache`: p50/p99;
- tokens/s of forced calls against free text: the same prompts without tools, same
  `--max-tokens`, same concurrency (completion tokens / wall time of each batch).
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

import jsonschema  # type: ignore[import-untyped]
import llama_cpp as llama
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llguidance.llamacpp import lltokenizer_from_vocab

from kimiserve.domain.types import (
    Constraint,
    GenerationRequest,
    Message,
    Sampling,
    ToolCallEvent,
    ToolChoice,
    ToolSpec,
    Usage,
)
from kimiserve.engines.llamacpp import LlamaCppConfig, LlamaCppEngine, default_model_path, toolcalls
from kimiserve.engines.llamacpp.grammar import GrammarCache
from kimiserve.errors import GrammarError, KimiserveError

PROMPT = "Call the tool with realistic arguments."


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def sample(folder: Path, n: int, seed: int) -> list[tuple[str, str]]:
    files = sorted(folder.glob("*.json"))
    random.Random(seed).shuffle(files)
    return [(p.name, p.read_text()) for p in files[:n]]


def compile_times(schemas: list[tuple[str, str]]) -> list[float]:
    """Milliseconds to compile each schema's call grammar (schema check + call wrapper)."""
    params = llama.llama_model_default_params()
    params.vocab_only = True
    model = llama.llama_model_load_from_file(default_model_path().encode(), params)
    vocab = llama.llama_model_get_vocab(model)
    n_vocab = llama.llama_vocab_n_tokens(vocab)
    eog = [t for t in range(n_vocab) if llama.llama_vocab_is_eog(vocab, t)]
    cache = GrammarCache(lltokenizer_from_vocab(vocab, eos_token=eog), size=2 * len(schemas) + 2)
    times = []
    for _, text in schemas:
        tool = ToolSpec("record", "", text)
        started = time.perf_counter()
        try:
            cache.get(Constraint(json_schema=text))
            cache.get_calls(toolcalls.call_grammar((tool,)), parameter="tools")
        except (GrammarError, ValueError):
            continue
        times.append((time.perf_counter() - started) * 1000)
    cache.close()
    llama.llama_model_free(model)
    return times


def request(schema: str, max_tokens: int, seed: int, tools: bool) -> GenerationRequest:
    return GenerationRequest(
        model="smollm2",
        messages=(Message("user", PROMPT),),
        sampling=Sampling(temperature=0.7, seed=seed, max_tokens=max_tokens),
        tools=(ToolSpec("record", "Record the data.", schema),) if tools else (),
        tool_choice=ToolChoice("required") if tools else ToolChoice(),
    )


def validates(schema_text: str, arguments: str) -> bool:
    schema = json.loads(schema_text)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    try:
        cls(schema, format_checker=cls.FORMAT_CHECKER).validate(json.loads(arguments))
    except jsonschema.ValidationError:
        return False
    except Exception:  # a schema jsonschema itself cannot use (bad $ref...): not counted valid
        return False
    return True


async def run_one(engine: LlamaCppEngine, req: GenerationRequest) -> tuple[str, ToolCallEvent | None, int]:
    call = None
    tokens = 0
    reason = "?"
    try:
        async for event in engine.generate(req):
            if isinstance(event, ToolCallEvent):
                call = event
            elif isinstance(event, Usage):
                tokens = event.completion_tokens
            elif hasattr(event, "reason"):
                reason = event.reason
    except KimiserveError as exc:
        return f"refused: {type(exc).__name__}", None, 0
    return reason, call, tokens


async def batch(
    engine: LlamaCppEngine, reqs: list[GenerationRequest], concurrency: int
) -> tuple[list[Any], float]:
    gate = asyncio.Semaphore(concurrency)

    async def one(r: GenerationRequest) -> Any:
        async with gate:
            return await run_one(engine, r)

    started = time.perf_counter()
    out = await asyncio.gather(*(one(r) for r in reqs))
    return out, time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--folders", default="Github_easy,Github_medium,Kubernetes")
    parser.add_argument("--per-folder", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = LlamaCppConfig(n_ctx=8192 * args.concurrency, max_sequences=args.concurrency)
    engine = await asyncio.to_thread(LlamaCppEngine, config)
    rows = []
    speed: list[tuple[str, float, float]] = []
    try:
        for folder in args.folders.split(","):
            schemas = sample(args.data / folder, args.per_folder, args.seed)
            compiled = compile_times(schemas)
            forced = [request(text, args.max_tokens, i, True) for i, (_, text) in enumerate(schemas)]
            results, forced_s = await batch(engine, forced, args.concurrency)
            kinds: dict[str, int] = {}
            valid = 0
            for (name, text), (reason, call, _) in zip(schemas, results, strict=True):
                if call is not None and validates(text, call.call.arguments):
                    valid += 1
                    continue
                kind = reason if call is None else "invalid"
                kinds[kind] = kinds.get(kind, 0) + 1
                print(f"  {folder}/{name}: {kind}", file=sys.stderr)
            free = [request(text, args.max_tokens, i, False) for i, (_, text) in enumerate(schemas)]
            free_results, free_s = await batch(engine, free, args.concurrency)
            forced_tps = sum(r[2] for r in results) / forced_s
            free_tps = sum(r[2] for r in free_results) / free_s
            speed.append((folder, forced_tps, free_tps))
            rows.append(
                (
                    folder,
                    len(schemas),
                    valid,
                    kinds,
                    percentile(compiled, 50),
                    percentile(compiled, 99),
                )
            )
            print(f"{folder}: {valid}/{len(schemas)} valid {kinds}", file=sys.stderr)
    finally:
        engine.close()
    print(
        "| folder | schemas | calls validate | failures | compile p50 ms | compile p99 ms "
        "| forced tok/s | free tok/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (folder, n, valid, kinds, p50, p99), (_, ftps, xtps) in zip(rows, speed, strict=True):
        fails = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) or "none"
        print(
            f"| {folder} | {n} | {valid}/{n} ({100 * valid / n:.0f}%) | {fails} | {p50:.1f} | {p99:.1f} "
            f"| {ftps:.1f} | {xtps:.1f} |"
        )
    print(f"\nmedian forced/free tokens/s: {statistics.median(f / x for _, f, x in speed if x):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
