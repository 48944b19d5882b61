"""Shared constants and helpers for the OpenAI-protocol tests."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

MODEL = "kimi-k2.6"
PROMPT = "Write one sentence about the sea."
KIMI_PRICE = (0.48, 2.00, 0.08)  # USD per 1M input, output, cached input tokens (the defaults)

# The scripted fake engine (KIMISERVE_ENGINE=fake) ignores stop sequences and response_format.
real_engine_only = pytest.mark.skipif(
    os.environ.get("KIMISERVE_ENGINE") == "fake", reason="needs the real engine's samplers"
)


def messages(text: str = PROMPT) -> list[Any]:
    return [{"role": "user", "content": text}]


def usage_rows(data_dir: Path, request_id: str) -> list[sqlite3.Row]:
    with closing(sqlite3.connect(data_dir / "kimiserve.db")) as db:
        db.row_factory = sqlite3.Row
        return db.execute(
            "SELECT * FROM usage_records WHERE request_id = ? ORDER BY id", (request_id,)
        ).fetchall()


def kimi_cost(prompt: int, completion: int, cached: int) -> float:
    return ((prompt - cached) * KIMI_PRICE[0] + cached * KIMI_PRICE[2] + completion * KIMI_PRICE[1]) / 1e6
