"""Accounts and hashed API keys in SQL."""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from kimiserve.domain.ports import AccountRow, KeyRow, Limits
from kimiserve.storage.sql.database import single_statement_reads
from kimiserve.storage.sql.tables import accounts, api_keys


def _limits(row: Any) -> Limits:
    return Limits(rpm=row.rpm_limit, tpm=row.tpm_limit, concurrency=row.concurrency_limit)


def _account(row: Any) -> AccountRow:
    return AccountRow(
        id=row.id,
        name=row.name,
        balance_micros=row.balance_micros,
        reserved_micros=row.reserved_micros,
        webhook_secret=row.webhook_secret,
        limits=_limits(row),
    )


def _key(row: Any, account_limits: Limits, account_metered: bool | None = None) -> KeyRow:
    return KeyRow(
        id=row.id,
        account_id=row.account_id,
        name=row.name,
        secret_hash=row.secret_hash,
        revoked=row.revoked_at is not None,
        scopes=frozenset(row.scopes.split()),
        models=tuple(json.loads(row.models)) if row.models is not None else None,
        limits=_limits(row),
        account_limits=account_limits,
        account_metered=account_metered,
    )


def _limit_values(limits: Limits) -> dict[str, int | None]:
    return {"rpm_limit": limits.rpm, "tpm_limit": limits.tpm, "concurrency_limit": limits.concurrency}


class SqlAccountStore:
    def __init__(self, db: AsyncEngine) -> None:
        self._db = db
        self._reads = single_statement_reads(db)

    async def create_account(self, account_id: str, name: str, webhook_secret: str) -> AccountRow:
        async with self._db.begin() as conn:
            await conn.execute(
                accounts.insert().values(
                    id=account_id,
                    name=name,
                    balance_micros=None,
                    reserved_micros=0,
                    webhook_secret=webhook_secret,
                    created_at=time.time(),
                )
            )
        return AccountRow(account_id, name, None, 0, webhook_secret, Limits())

    async def get_account(self, account_id: str) -> AccountRow | None:
        async with self._db.connect() as conn:
            row = (await conn.execute(accounts.select().where(accounts.c.id == account_id))).first()
        return _account(row) if row is not None else None

    async def find_account_by_name(self, name: str) -> AccountRow | None:
        async with self._db.connect() as conn:
            row = (await conn.execute(accounts.select().where(accounts.c.name == name))).first()
        return _account(row) if row is not None else None

    async def list_accounts(self) -> list[AccountRow]:
        async with self._db.connect() as conn:
            rows = (await conn.execute(accounts.select().order_by(accounts.c.created_at))).all()
        return [_account(r) for r in rows]

    async def set_account_limits(self, account_id: str, limits: Limits) -> bool:
        async with self._db.begin() as conn:
            result = await conn.execute(
                accounts.update().where(accounts.c.id == account_id).values(**_limit_values(limits))
            )
        return bool(result.rowcount)

    async def create_key(
        self,
        key_id: str,
        account_id: str,
        name: str,
        secret_hash: str,
        *,
        scopes: frozenset[str],
        models: tuple[str, ...] | None,
        limits: Limits,
    ) -> None:
        async with self._db.begin() as conn:
            await conn.execute(
                api_keys.insert().values(
                    id=key_id,
                    account_id=account_id,
                    name=name,
                    secret_hash=secret_hash,
                    created_at=time.time(),
                    revoked_at=None,
                    scopes=" ".join(sorted(scopes)),
                    models=json.dumps(list(models)) if models is not None else None,
                    **_limit_values(limits),
                )
            )

    async def get_key(self, key_id: str) -> KeyRow | None:
        """The key with its account's limits and whether it is metered (one query: authentication
        is on every request)."""
        query = (
            sa.select(
                api_keys,
                accounts.c.rpm_limit.label("a_rpm"),
                accounts.c.tpm_limit.label("a_tpm"),
                accounts.c.concurrency_limit.label("a_conc"),
                accounts.c.balance_micros.label("a_balance"),
            )
            .join(accounts, accounts.c.id == api_keys.c.account_id)
            .where(api_keys.c.id == key_id)
        )
        async with self._reads.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        limits = Limits(rpm=row.a_rpm, tpm=row.a_tpm, concurrency=row.a_conc)
        return _key(row, limits, account_metered=row.a_balance is not None)

    async def set_key_limits(self, key_id: str, limits: Limits) -> bool:
        async with self._db.begin() as conn:
            result = await conn.execute(
                api_keys.update().where(api_keys.c.id == key_id).values(**_limit_values(limits))
            )
        return bool(result.rowcount)

    async def revoke_key(self, key_id: str) -> bool:
        async with self._db.begin() as conn:
            result = await conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
        return bool(result.rowcount)

    async def list_keys(self, account_id: str | None = None) -> list[KeyRow]:
        query = api_keys.select().order_by(api_keys.c.created_at)
        if account_id is not None:
            query = query.where(api_keys.c.account_id == account_id)
        async with self._db.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_key(r, Limits()) for r in rows]
