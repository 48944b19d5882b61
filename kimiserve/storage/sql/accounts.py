"""Accounts and hashed API keys in SQL."""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from kimiserve.storage.sql.tables import accounts, api_keys


@dataclass(frozen=True)
class AccountRow:
    id: str
    name: str
    balance_usd: float | None
    webhook_secret: str


@dataclass(frozen=True)
class KeyRow:
    id: str
    account_id: str
    name: str
    secret_hash: str
    revoked: bool


class SqlAccountStore:
    def __init__(self, db: AsyncEngine) -> None:
        self._db = db

    async def create_account(self, account_id: str, name: str, webhook_secret: str) -> AccountRow:
        async with self._db.begin() as conn:
            await conn.execute(
                accounts.insert().values(
                    id=account_id,
                    name=name,
                    balance_usd=None,
                    webhook_secret=webhook_secret,
                    created_at=time.time(),
                )
            )
        return AccountRow(account_id, name, None, webhook_secret)

    async def get_account(self, account_id: str) -> AccountRow | None:
        async with self._db.connect() as conn:
            row = (await conn.execute(accounts.select().where(accounts.c.id == account_id))).first()
        if row is None:
            return None
        return AccountRow(row.id, row.name, row.balance_usd, row.webhook_secret)

    async def find_account_by_name(self, name: str) -> AccountRow | None:
        async with self._db.connect() as conn:
            row = (await conn.execute(accounts.select().where(accounts.c.name == name))).first()
        if row is None:
            return None
        return AccountRow(row.id, row.name, row.balance_usd, row.webhook_secret)

    async def add_balance(self, account_id: str, delta_usd: float) -> None:
        async with self._db.begin() as conn:
            await conn.execute(
                accounts.update()
                .where(accounts.c.id == account_id)
                .values(balance_usd=sa.func.coalesce(accounts.c.balance_usd, 0.0) + delta_usd)
            )

    async def charge(self, account_id: str, cost_usd: float) -> None:
        """Subtract a settled cost from a metered account (unlimited accounts stay NULL)."""
        async with self._db.begin() as conn:
            await conn.execute(
                accounts.update()
                .where(accounts.c.id == account_id, accounts.c.balance_usd.is_not(None))
                .values(balance_usd=accounts.c.balance_usd - cost_usd)
            )

    async def create_key(self, key_id: str, account_id: str, name: str, secret_hash: str) -> None:
        async with self._db.begin() as conn:
            await conn.execute(
                api_keys.insert().values(
                    id=key_id,
                    account_id=account_id,
                    name=name,
                    secret_hash=secret_hash,
                    created_at=time.time(),
                    revoked_at=None,
                )
            )

    async def get_key(self, key_id: str) -> KeyRow | None:
        async with self._db.connect() as conn:
            row = (await conn.execute(api_keys.select().where(api_keys.c.id == key_id))).first()
        if row is None:
            return None
        return KeyRow(row.id, row.account_id, row.name, row.secret_hash, row.revoked_at is not None)

    async def revoke_key(self, key_id: str) -> bool:
        async with self._db.begin() as conn:
            result = await conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
        return bool(result.rowcount)

    async def list_keys(self) -> list[KeyRow]:
        async with self._db.connect() as conn:
            rows = (await conn.execute(api_keys.select().order_by(api_keys.c.created_at))).all()
        return [KeyRow(r.id, r.account_id, r.name, r.secret_hash, r.revoked_at is not None) for r in rows]
