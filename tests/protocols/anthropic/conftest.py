"""An AsyncAnthropic client on the session's real server process (the embedded model)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from anthropic import AsyncAnthropic

from tests.serverproc import ServerProcess


@pytest.fixture
async def client(server: ServerProcess, api_key: str) -> AsyncIterator[AsyncAnthropic]:
    async with AsyncAnthropic(base_url=server.base_url, api_key=api_key, max_retries=0) as c:
        yield c
