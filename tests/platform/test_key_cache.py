"""The in-memory key rows (`KIMISERVE_KEY_CACHE_S`): read once per key and second, forgotten at once
by every change made through this server, and bounded in time for a change made elsewhere."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.inprocess import InProcess, serve_in_process
from tests.platform.support import AdminClient, runware, serving_with_admin_key, text_task
from tests.serverproc import cli, create_key

CACHE_S = 30.0  # long, so a test that passes cannot have waited the cache out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    data_dir: Path = tmp_path_factory.mktemp("key-cache")
    with serving_with_admin_key(data_dir, key_cache_s=CACHE_S) as running:
        yield running


@pytest.fixture
async def admin(server: InProcess) -> AsyncIterator[AdminClient]:
    client = AdminClient(server, server.key)
    yield client
    await client.aclose()


class CountingReads:
    """Counts the key reads that reach the store."""

    def __init__(self, server: InProcess) -> None:
        self.keys = server.services.platform.keys
        self.store = self.keys._store
        self.reads = 0

    def __enter__(self) -> CountingReads:
        real = self.store.get_key

        async def counted(key_id: str) -> Any:
            self.reads += 1
            return await real(key_id)

        self.keys._store = _Wrapped(self.store, counted)  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        self.keys._store = self.store


class _Wrapped:
    def __init__(self, inner: Any, get_key: Any) -> None:
        self._inner = inner
        self.get_key = get_key

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_key_is_read_once_for_many_requests(server: InProcess, admin: AdminClient) -> None:
    key = await admin.account_with_key("cache-reads")
    with CountingReads(server) as counting:
        for _ in range(5):
            assert (await runware(server, key, text_task())).status_code == 200
    assert counting.reads == 1
    # A wrong secret for a cached key id is still refused: the row is cached, not the verdict.
    forged = key[: key.rindex("-") + 1] + "x" * 43
    reply = await runware(server, forged, text_task())
    assert reply.status_code == 401 and reply.json()["errors"][0]["parameter"] == "apiKey"


async def test_a_revocation_through_the_admin_api_applies_at_once(
    server: InProcess, admin: AdminClient
) -> None:
    key = await admin.account_with_key("cache-revoke")
    assert (await runware(server, key, text_task())).status_code == 200  # now cached
    await admin.call("POST", f"/admin/keys/{key.split('-')[1]}/revoke")
    reply = await runware(server, key, text_task())
    assert reply.status_code == 401 and reply.json()["errors"][0]["code"] == "invalidApiKey"


async def test_new_limits_apply_at_once(server: InProcess, admin: AdminClient) -> None:
    key = await admin.account_with_key("cache-limits")
    assert (await runware(server, key, text_task())).status_code == 200
    await admin.call("PUT", f"/admin/keys/{key.split('-')[1]}/limits", {"rpm": 1})
    assert (await runware(server, key, text_task())).status_code == 200
    assert (await runware(server, key, text_task())).status_code == 429


async def test_a_first_top_up_meters_the_next_request(server: InProcess, admin: AdminClient) -> None:
    key = await admin.account_with_key("cache-metered")
    assert (await runware(server, key, text_task())).status_code == 200  # unmetered, and cached as such
    await admin.call("POST", "/admin/accounts/cache-metered/top-up", {"amount_usd": "1"})
    assert (await runware(server, key, text_task())).status_code == 200
    shown = await admin.show("cache-metered")
    assert shown["metered"] and shown["balance_micros"] < 1_000_000  # the request was charged


async def test_a_revocation_by_another_process_applies_within_the_cache_time(tmp_path: Path) -> None:
    key = create_key(tmp_path, "default", "elsewhere")
    with serve_in_process(tmp_path, key_cache_s=1.0) as server:
        assert (await runware(server, key, text_task())).status_code == 200  # cached
        await asyncio.to_thread(cli, tmp_path, "keys", "revoke", key.split("-")[1])
        revoked_at = time.monotonic()
        while (reply := await runware(server, key, text_task())).status_code == 200:
            assert time.monotonic() - revoked_at < 1.0 + 0.5, "still accepted past the cache time"
            await asyncio.sleep(0.05)
        assert reply.status_code == 401
