"""Helpers for tests that drive accounts, keys and money through the admin API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from tests.inprocess import InProcess, serve_in_process
from tests.serverproc import create_key


@contextmanager
def serving_with_admin_key(data_dir: Path, **settings: object) -> Iterator[InProcess]:
    """An in-process server (serve_in_process) whose `key` is an all-scopes key of the default
    account, for an AdminClient."""
    key = create_key(data_dir, "default", "admin", "--scopes", "all")
    with serve_in_process(data_dir, **settings) as running:
        running.key = key
        yield running


async def runware(server: InProcess, key: str, task: dict[str, Any]) -> httpx.Response:
    """One task posted to the Runware API with `key`."""
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(
            f"{server.base_url}/v1", json=[task], headers={"Authorization": f"Bearer {key}"}
        )


class AdminClient:
    def __init__(self, server: InProcess, key: str) -> None:
        self._http = httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        r = await self._http.request(method, path, json=body)
        assert r.status_code == 200, r.text
        return r.json()

    async def account_with_key(self, name: str, micros: int | None = None, **key: Any) -> str:
        """A new account (topped up with `micros` when given) and a key of it; the key's text."""
        await self.call("POST", "/admin/accounts", {"name": name})
        if micros is not None:
            amount = str(Decimal(micros) / 1_000_000)
            await self.call("POST", f"/admin/accounts/{name}/top-up", {"amount_usd": amount})
        created = await self.call("POST", "/admin/keys", {"account": name, "name": name, **key})
        return str(created["key"])

    async def show(self, name: str) -> dict[str, Any]:
        return dict(await self.call("GET", f"/admin/accounts/{name}"))


def text_task(max_tokens: int = 4, n: int = 1, text: str = "a b c d e f g h", **extra: Any) -> dict[str, Any]:
    return {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "kimi-k2.6",
        "messages": [{"role": "user", "content": text}],
        "settings": {"maxTokens": max_tokens},
        "numberResults": n,
        **extra,
    }


def assert_ledger_consistent(account: dict[str, Any]) -> None:
    """The ledger's amounts sum to the balance, its holds to what is reserved, nothing is held,
    and the balance never went below 0 (it only ever decreases by settlements)."""
    ledger = account["ledger"]
    assert sum(e["amount_micros"] for e in ledger) == account["balance_micros"]
    assert sum(e["hold_micros"] for e in ledger) == account["reserved_micros"] == 0
    assert account["balance_micros"] >= 0
    settled = sum(-e["amount_micros"] for e in ledger if e["kind"] == "settlement")
    assert settled == account["usage"]["cost_micros"]
