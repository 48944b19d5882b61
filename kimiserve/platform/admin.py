"""Operator operations on accounts, balances, keys and limits: one implementation behind both
the `kimiserve accounts|keys` commands and the `/admin/` HTTP API.

Every result is a plain JSON-ready dict (money as integer micro-USD and as a USD string), so
the CLI's `--json` and the HTTP API print the same objects.
"""

from __future__ import annotations

from dataclasses import asdict
from decimal import Decimal
from typing import Any

from kimiserve.domain.ports import AccountRow, AccountStore, KeyRow, LedgerStore, Limits, UsageStore
from kimiserve.errors import InvalidRequest, NotFound
from kimiserve.platform.accounts import Accounts
from kimiserve.platform.api_keys import ApiKeys
from kimiserve.platform.prices import MICROS_PER_USD, usd_to_micros


def usd(micros: int | None) -> str | None:
    """Micro-USD as an exact decimal string of dollars (`12.345678`)."""
    return None if micros is None else str(Decimal(micros) / MICROS_PER_USD)


def account_view(row: AccountRow) -> dict[str, Any]:
    available = None if row.balance_micros is None else row.balance_micros - row.reserved_micros
    return {
        "id": row.id,
        "name": row.name,
        "metered": row.metered,
        "balance_micros": row.balance_micros,
        "reserved_micros": row.reserved_micros,
        "available_micros": available,
        "balance_usd": usd(row.balance_micros),
        "limits": asdict(row.limits),
    }


def key_view(row: KeyRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "account_id": row.account_id,
        "name": row.name,
        "state": "revoked" if row.revoked else "active",
        "scopes": sorted(row.scopes),
        "models": list(row.models) if row.models is not None else None,
        "limits": asdict(row.limits),
    }


def parse_usd(text: str | float, parameter: str = "amount_usd") -> int:
    try:
        micros = usd_to_micros(text)
    except ArithmeticError:
        raise InvalidRequest(f"{parameter} must be a number of dollars.", parameter=parameter) from None
    if micros <= 0:
        raise InvalidRequest(f"{parameter} must be more than 0.", parameter=parameter)
    return micros


class Admin:
    def __init__(
        self, store: AccountStore, ledger: LedgerStore, usage: UsageStore, accounts: Accounts, keys: ApiKeys
    ) -> None:
        self._store = store
        self._ledger = ledger
        self._usage = usage
        self._accounts = accounts
        self._keys = keys

    async def account(self, ref: str) -> AccountRow:
        """An account by id or by name."""
        row = await self._store.get_account(ref) or await self._store.find_account_by_name(ref)
        if row is None:
            raise NotFound(f"No account {ref!r}.", code="accountNotFound", parameter="account")
        return row

    async def create_account(self, name: str) -> dict[str, Any]:
        if not name or len(name) > 200:
            raise InvalidRequest("name must be 1 to 200 characters.", parameter="name")
        if await self._store.find_account_by_name(name) is not None:
            raise InvalidRequest(f"An account named {name!r} exists.", code="accountExists", parameter="name")
        return account_view(await self._accounts.get_or_create(name))

    async def list_accounts(self) -> list[dict[str, Any]]:
        return [account_view(a) for a in await self._store.list_accounts()]

    async def show_account(self, ref: str) -> dict[str, Any]:
        row = await self.account(ref)
        usage = await self._usage.for_account(row.id)
        view = account_view(row)
        view["keys"] = [key_view(k) for k in await self._store.list_keys(row.id)]
        view["usage"] = {
            "generations": len(usage),
            "prompt_tokens": sum(u.prompt_tokens for u in usage),
            "completion_tokens": sum(u.completion_tokens for u in usage),
            "cost_micros": sum(u.cost_micros for u in usage),
        }
        view["ledger"] = [asdict(e) for e in await self._ledger.entries(row.id)]
        return view

    async def top_up(self, ref: str, amount_micros: int, note: str | None = None) -> dict[str, Any]:
        row = await self.account(ref)
        await self._ledger.top_up(row.id, amount_micros, note)
        await self._keys.changed_account(row.id)  # a first top-up makes the account metered
        return account_view(await self.account(row.id))

    async def set_account_limits(self, ref: str, limits: Limits) -> dict[str, Any]:
        row = await self.account(ref)
        await self._store.set_account_limits(row.id, limits)
        await self._keys.changed_account(row.id)
        return account_view(await self.account(row.id))

    async def create_key(
        self,
        account_ref: str,
        name: str,
        *,
        scopes: frozenset[str],
        models: tuple[str, ...] | None,
        limits: Limits,
        create_account: bool = False,
    ) -> dict[str, Any]:
        """A new key; the result's `key` is the only time its text is shown."""
        if create_account:
            account = await self._accounts.get_or_create(account_ref)
        else:
            account = await self.account(account_ref)
        key_id, text = await self._keys.create(account.id, name, scopes=scopes, models=models, limits=limits)
        [row] = [k for k in await self._store.list_keys(account.id) if k.id == key_id]
        return {**key_view(row), "key": text}

    async def list_keys(self, account_ref: str | None = None) -> list[dict[str, Any]]:
        account_id = (await self.account(account_ref)).id if account_ref is not None else None
        return [key_view(k) for k in await self._store.list_keys(account_id)]

    async def revoke_key(self, key_id: str) -> bool:
        revoked = await self._store.revoke_key(key_id)
        await self._keys.changed_key(key_id)
        return revoked

    async def set_key_limits(self, key_id: str, limits: Limits) -> bool:
        changed = await self._store.set_key_limits(key_id, limits)
        await self._keys.changed_key(key_id)
        return changed
