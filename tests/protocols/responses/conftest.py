"""AsyncOpenAI clients on the session's real server process (the embedded model)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from openai import AsyncOpenAI

from tests.serverproc import ServerProcess


@pytest.fixture
async def client(server: ServerProcess, api_key: str) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=api_key, max_retries=0) as c:
        yield c


@pytest.fixture
async def other_client(server: ServerProcess, other_key: str) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=other_key, max_retries=0) as c:
        yield c
