"""JSONSchemaBench schemas through a running kimiserve: forced tool calls and json_schema outputs.

    .venv/bin/python bench/tools.py --data DIR [--folders Glaiveai2K,Github_medium]
                                    [--per-folder 60] [--spread] [--max-tokens 384] [--concurrency 4]
    .venv/bin/python bench/tools.py --data DIR --compile-only [--folders ...]

DIR holds JSONSchemaBench's `data/` folders (github:guidance-ai/jsonschemabench). That mirror has
no train/test split, so the sample is fixed and documented: the first `--per-folder` files of
each folder sorted by name, or with `--spread` that many spaced evenly over the sorted folder
(RESULTS.md lists the folders, the count and the option). A kimiserve server
process with the embedded model (tests/serverproc.py) answers two requests per schema over HTTP:

- `tools`: the schema is the parameters of the one tool, `tool_choice` names it;
- `json`: `response_format: {"type": "json_schema", ...}` with the schema.

`--compile-only` runs no model: it compiles each sampled schema as the engine does
(`grammar.prepare`, then llguidance with the engine's options) and counts what compiles, what
is refused as unenforceable (by keyword) and what does not compile.

Each output is validated with jsonschema (draft from `$schema`, 2020-12 by default) and its
FormatChecker. Every failure is classified and listed: `cut` (finish_reason length), `format`
(the first error is a `format` error), `refused` (a 400 saying a keyword cannot be enforced),
`unsatisfiable` (a 400 saying the schema admits no value: a defect of the schema),
`compile` (any other 400: the grammar did not compile), `invalid` (another validation error),
`no call`. No anchor run is printed: the venv has no llama-server, and llama-cpp-python's own
JSON-schema grammar (GBNF) is the converter the engine replaced because it crashed on these
schemas (`bench/grammar.py`), so its figures would measure that converter, not the model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.serverproc import ServerProcess, create_key

TOOL_PROMPT = "Call the tool with realistic arguments."
JSON_PROMPT = "Answer with a realistic example of the requested JSON."


def sample(folder: Path, n: int, spread: bool = False) -> list[tuple[str, str]]:
    """The first `n` files by name, or (`spread`) `n` spaced evenly over the sorted folder."""
    files = sorted(folder.glob("*.json"))
    picked = [files[i * len(files) // n] for i in range(min(n, len(files)))] if spread else files[:n]
    return [(p.name, p.read_text()) for p in picked]


def tool_name(file_name: str) -> str:
    """Glaive files are `<function>_<hash>.json`: the function's name; others `record`."""
    stem = file_name.removesuffix(".json")
    head, _, tail = stem.rpartition("_")
    return head if head and len(tail) == 8 else "record"


def body(mode: str, name: str, schema: Any, max_tokens: int, seed: int, model: str) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": 0.7, "seed": seed}
    if mode == "tools":
        function = {"name": tool_name(name), "description": "Record the data.", "parameters": schema}
        out["messages"] = [{"role": "user", "content": TOOL_PROMPT}]
        out["tools"] = [{"type": "function", "function": function}]
        out["tool_choice"] = {"type": "function", "function": {"name": function["name"]}}
    else:
        out["messages"] = [{"role": "user", "content": JSON_PROMPT}]
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}
    return out


def verdict(schema: Any, text: str) -> tuple[str, str]:
    """(kind, detail): `ok`, `format` or `invalid` for a complete output."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        return "invalid", f"not JSON: {exc}"
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        error = jsonschema.exceptions.best_match(
            cls(schema, format_checker=cls.FORMAT_CHECKER).iter_errors(value)
        )
    except Exception as exc:  # a schema jsonschema cannot use (unresolvable $ref...)
        return "invalid", f"validator failed: {type(exc).__name__}: {exc}"
    if error is None:
        return "ok", ""
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return ("format" if error.validator == "format" else "invalid"), f"{where}: {error.message[:120]}"


def classify(mode: str, schema: Any, status: int, reply: dict[str, Any]) -> tuple[str, str]:
    if status == 400:
        message = str(reply.get("error", {}).get("message", ""))
        if "admits no value" in message:
            return "unsatisfiable", message[:160]
        return ("refused" if "cannot enforce" in message else "compile"), message[:160]
    if status != 200:
        return "other", f"HTTP {status}: {json.dumps(reply)[:160]}"
    choice = reply["choices"][0]
    message = choice["message"]
    if choice["finish_reason"] == "length":
        calls = message.get("tool_calls") or []
        text = calls[0]["function"]["arguments"] if calls else message.get("content") or ""
        return "cut", f"...{text[-100:]!r}"
    if mode == "tools":
        calls = message.get("tool_calls") or []
        if not calls:
            return "no call", (message.get("content") or "")[:80]
        return verdict(schema, calls[0]["function"]["arguments"])
    return verdict(schema, message.get("content") or "")


async def run_folder(
    client: httpx.AsyncClient,
    folder: str,
    schemas: list[tuple[str, str]],
    args: argparse.Namespace,
    model: str,
) -> dict[str, list[tuple[str, str, str]]]:
    gate = asyncio.Semaphore(args.concurrency)
    results: dict[str, list[tuple[str, str, str]]] = {"tools": [], "json": []}

    async def one(mode: str, seed: int, name: str, text: str) -> None:
        schema = json.loads(text)
        async with gate:
            response = await client.post(
                "/v1/chat/completions", json=body(mode, name, schema, args.max_tokens, seed, model)
            )
        kind, detail = classify(mode, schema, response.status_code, response.json())
        results[mode].append((name, kind, detail))
        if kind != "ok":
            print(f"  {folder}/{name} [{mode}]: {kind} {detail}", file=sys.stderr)

    await asyncio.gather(
        *(one(mode, i, name, text) for mode in ("tools", "json") for i, (name, text) in enumerate(schemas))
    )
    return results


def compile_only(data: Path, folders: list[str], n: int) -> None:
    import llguidance

    from kimiserve.engines.llamacpp.grammar import JSON_OPTIONS, prepare
    from kimiserve.engines.llamacpp.schemas import refusal
    from kimiserve.errors import GrammarError

    print("| folder | schemas | compile | refused (cannot enforce) | do not compile |")
    print("|---|---|---|---|---|")
    for folder in folders:
        refused: dict[str, int] = {}
        failed = 0
        schemas = sample(data / folder, n)
        for _, text in schemas:
            try:
                source = llguidance.LLMatcher.grammar_from_json_schema(
                    prepare(json.loads(text)), overrides=JSON_OPTIONS
                )
                error = llguidance.LLMatcher.validate_grammar(source)
                reason = (refusal(error) or "") if error else None
            except GrammarError as exc:
                error, reason = exc.message, exc.message
            if error and reason:
                named = reason.split("`")
                key = "look-around" if "look-around" in reason else (named[1] if len(named) > 2 else reason)
                refused[key] = refused.get(key, 0) + 1
            elif error:
                failed += 1
        ok = len(schemas) - failed - sum(refused.values())
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(refused.items())) or "none"
        print(f"| {folder} | {len(schemas)} | {ok} | {kinds} | {failed} |")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--folders", default="Glaiveai2K,Github_medium")
    parser.add_argument("--per-folder", type=int, default=60)
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--spread", action="store_true", help="sample evenly over each folder")
    parser.add_argument("--compile-only", action="store_true")
    args = parser.parse_args()
    if args.compile_only:
        compile_only(args.data, args.folders.split(","), args.per_folder)
        return
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp), env={"KIMISERVE_MAX_SEQUENCES": str(args.concurrency)})
        key = create_key(Path(tmp))
        server.start(timeout_s=180)
        rows = []
        try:
            async with httpx.AsyncClient(
                base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=600
            ) as client:
                model = (await client.get("/v1/models")).json()["data"][0]["id"]
                for folder in args.folders.split(","):
                    schemas = sample(args.data / folder, args.per_folder, args.spread)
                    rows.append(
                        (folder, len(schemas), await run_folder(client, folder, schemas, args, model))
                    )
        finally:
            server.stop()
    print("| folder | schemas | forced tool calls valid | failures | json_schema valid | failures |")
    print("|---|---|---|---|---|---|")
    for folder, n, results in rows:
        cells = []
        for mode in ("tools", "json"):
            valid = sum(kind == "ok" for _, kind, _ in results[mode])
            kinds: dict[str, int] = {}
            for _, kind, _ in results[mode]:
                if kind != "ok":
                    kinds[kind] = kinds.get(kind, 0) + 1
            fails = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) or "none"
            cells += [f"{valid}/{n} ({100 * valid / n:.1f}%)", fails]
        print(f"| {folder} | {n} | {' | '.join(cells)} |")


if __name__ == "__main__":
    asyncio.run(main())
