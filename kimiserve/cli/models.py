"""`kimiserve models check`: validate the models file and probe every upstream (`GET /models`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from kimiserve.cli.output import print_table, show
from kimiserve.config import models_file
from kimiserve.engines.openai_compat import UpstreamEngine
from kimiserve.errors import KimiserveError
from kimiserve.settings import Settings


async def _probe(model_id: str, engine: UpstreamEngine) -> dict[str, Any]:
    config = engine.config
    row: dict[str, Any] = {"model": model_id, "url": config.label, "dialect": config.dialect}
    started = time.monotonic()
    try:
        listed = await engine.models()
    except KimiserveError as exc:
        row.update(ok=False, ms=None, detail=exc.message)
    else:
        found = config.model in listed
        detail = (
            "serves " + config.model if found else f"does not list {config.model} (lists {', '.join(listed)})"
        )
        row.update(ok=found, ms=round((time.monotonic() - started) * 1000, 1), detail=detail)
    finally:
        await engine.aclose()
    return row


async def run(settings: Settings, args: argparse.Namespace) -> int:
    if settings.models_file is None:
        raise KimiserveError("no models file: pass --models-file or set KIMISERVE_MODELS_FILE")
    parsed = models_file.load(settings.models_file)
    probes = []
    for i, model in enumerate(parsed.models):
        for j, upstream in enumerate(model.upstreams):
            key = models_file.resolve_key(upstream, f"models[{i}].upstreams[{j}]", os.environ)
            probes.append(_probe(model.id, UpstreamEngine(upstream.config(), api_key=key)))
    rows = await asyncio.gather(*probes)
    if args.json:
        show({"upstreams": rows}, as_json=True)
    else:
        print_table(
            ["MODEL", "UPSTREAM", "DIALECT", "OK", "MS", "DETAIL"],
            [
                [r["model"], r["url"], r["dialect"], "yes" if r["ok"] else "NO", r["ms"] or "-", r["detail"]]
                for r in rows
            ],
        )
    return 0 if all(r["ok"] for r in rows) else 1
