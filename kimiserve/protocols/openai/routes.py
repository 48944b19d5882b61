"""OpenAI-compatible routes (filled in by the OpenAI-protocol work)."""

from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
