"""schemathesis, driven by seed 000 (Runware's OpenAPI document for Kimi K2.6), against a real
server process: a fixed number of schema-valid and schema-violating bodies, fixed seed.

Fails on any 5xx, any body that is not JSON, any response slower than SLOW_S. Counts are
printed (`pytest -s`), e.g. `schemathesis: 240 cases, 0 5xx`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core import NOT_SET

from tests.hostile.clients import SEED_000
from tests.serverproc import ServerProcess

CASES_PER_MODE = 120
SLOW_S = 5.0

if not SEED_000.exists():
    pytest.skip(f"seed 000 not found at {SEED_000}", allow_module_level=True)
SCHEMA = schemathesis.openapi.from_dict(json.loads(SEED_000.read_text()))
OPERATION = SCHEMA["/"]["POST"]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_seed_000_never_500s(fake_server: ServerProcess, keys: dict[str, str], mode: GenerationMode) -> None:
    statuses: Counter[int] = Counter()
    client = httpx.Client(base_url=fake_server.base_url, timeout=30)

    @seed(10)
    @settings(
        max_examples=CASES_PER_MODE,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
        suppress_health_check=list(HealthCheck),
    )
    @given(case=OPERATION.as_strategy(generation_mode=mode), authenticated=st.booleans())
    def one(case: schemathesis.Case[Any], authenticated: bool) -> None:
        headers = {"authorization": f"Bearer {keys['alice']}"} if authenticated else {}
        if isinstance(case.body, bytes):  # negative cases may break the media type itself
            content, media_type = case.body, case.media_type or "application/octet-stream"
        else:
            body = None if case.body is NOT_SET else case.body
            content, media_type = json.dumps(body, ensure_ascii=True).encode(), "application/json"
        started = time.monotonic()
        response = client.post("/", content=content, headers={**headers, "content-type": media_type})
        elapsed = time.monotonic() - started
        statuses[response.status_code] += 1
        assert response.status_code < 500, (content[:500], response.text[:500])
        assert response.headers.get("content-type", "").startswith(("application/json", "text/event-stream"))
        if response.headers["content-type"].startswith("application/json"):
            response.json()
        assert elapsed < SLOW_S, (elapsed, content[:500])

    try:
        one()
    finally:
        client.close()
        print(f"schemathesis {mode}: {sum(statuses.values())} cases, statuses {dict(statuses)}")
    assert sum(n for status, n in statuses.items() if status >= 500) == 0
