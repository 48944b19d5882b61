"""The ledger in SQL: balances, holds and their entries, always moved in one transaction.

A hold is taken with one conditional UPDATE (`balance - reserved >= amount`), so concurrent
reservations can never together exceed the balance, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kimiserve.domain.ports import InsufficientBalance, LedgerEntry, UsageRow
from kimiserve.storage.sql.tables import accounts, ledger_entries, reservations, usage_records


def _entry(
    account_id: str,
    kind: str,
    *,
    amount: int = 0,
    hold: int = 0,
    reservation_id: str | None = None,
    request_id: str | None = None,
    note: str | None = None,
) -> dict[str, object]:
    return {
        "account_id": account_id,
        "kind": kind,
        "amount_micros": amount,
        "hold_micros": hold,
        "reservation_id": reservation_id,
        "request_id": request_id,
        "note": note,
        "created_at": time.time(),
    }


class SqlLedgerStore:
    def __init__(self, db: AsyncEngine) -> None:
        self._db = db

    async def reserve(self, account_id: str, request_id: str, holds: list[tuple[str, int]]) -> None:
        total = sum(amount for _, amount in holds)
        now = time.time()
        async with self._db.begin() as conn:
            result = await conn.execute(
                accounts.update()
                .where(
                    accounts.c.id == account_id,
                    accounts.c.balance_micros.is_not(None),
                    accounts.c.balance_micros - accounts.c.reserved_micros >= total,
                )
                .values(reserved_micros=accounts.c.reserved_micros + total)
            )
            if not result.rowcount:
                raise InsufficientBalance(account_id)
            await conn.execute(
                reservations.insert(),
                [
                    {
                        "id": rid,
                        "account_id": account_id,
                        "request_id": request_id,
                        "amount_micros": amount,
                        "status": "held",
                        "created_at": now,
                        "updated_at": now,
                    }
                    for rid, amount in holds
                ],
            )
            await conn.execute(
                ledger_entries.insert(),
                [
                    _entry(account_id, "reservation", hold=amount, reservation_id=rid, request_id=request_id)
                    for rid, amount in holds
                ],
            )

    async def _close_hold(
        self, conn: AsyncConnection, reservation_id: str, status: str
    ) -> tuple[str, int, str] | None:
        """Mark a held reservation settled/released; (account, amount, request id) or None."""
        row = (
            await conn.execute(
                sa.select(
                    reservations.c.account_id, reservations.c.amount_micros, reservations.c.request_id
                ).where(reservations.c.id == reservation_id, reservations.c.status == "held")
            )
        ).first()
        if row is None:
            return None
        updated = await conn.execute(
            reservations.update()
            .where(reservations.c.id == reservation_id, reservations.c.status == "held")
            .values(status=status, updated_at=time.time())
        )
        if not updated.rowcount:  # another transaction closed it first
            return None
        return row.account_id, int(row.amount_micros), row.request_id

    async def settle(self, reservation_id: str | None, usage: UsageRow) -> None:
        async with self._db.begin() as conn:
            await conn.execute(usage_records.insert().values(**usage.__dict__, created_at=time.time()))
            if reservation_id is None:
                return
            held = await self._close_hold(conn, reservation_id, "settled")
            if held is None:
                raise RuntimeError(f"reservation {reservation_id} is not held")  # rolls the usage row back
            account_id, amount, request_id = held
            await conn.execute(
                accounts.update()
                .where(accounts.c.id == account_id)
                .values(
                    balance_micros=accounts.c.balance_micros - usage.cost_micros,
                    reserved_micros=accounts.c.reserved_micros - amount,
                )
            )
            await conn.execute(
                ledger_entries.insert().values(
                    **_entry(
                        account_id,
                        "settlement",
                        amount=-usage.cost_micros,
                        hold=-amount,
                        reservation_id=reservation_id,
                        request_id=request_id,
                        note=usage.outcome,
                    )
                )
            )

    async def release(self, reservation_id: str) -> None:
        async with self._db.begin() as conn:
            held = await self._close_hold(conn, reservation_id, "released")
            if held is None:
                return
            account_id, amount, request_id = held
            await self._unhold(conn, account_id, amount, reservation_id, request_id)

    async def _unhold(
        self, conn: AsyncConnection, account_id: str, amount: int, reservation_id: str, request_id: str
    ) -> None:
        await conn.execute(
            accounts.update()
            .where(accounts.c.id == account_id)
            .values(reserved_micros=accounts.c.reserved_micros - amount)
        )
        await conn.execute(
            ledger_entries.insert().values(
                **_entry(
                    account_id, "release", hold=-amount, reservation_id=reservation_id, request_id=request_id
                )
            )
        )

    async def top_up(self, account_id: str, amount_micros: int, note: str | None) -> int:
        async with self._db.begin() as conn:
            result = await conn.execute(
                accounts.update()
                .where(accounts.c.id == account_id)
                .values(balance_micros=sa.func.coalesce(accounts.c.balance_micros, 0) + amount_micros)
            )
            if not result.rowcount:
                raise KeyError(account_id)
            await conn.execute(
                ledger_entries.insert().values(**_entry(account_id, "topup", amount=amount_micros, note=note))
            )
            balance = await conn.scalar(
                sa.select(accounts.c.balance_micros).where(accounts.c.id == account_id)
            )
        return int(balance)

    async def release_all_held(self) -> int:
        async with self._db.begin() as conn:
            rows = (
                (await conn.execute(sa.select(reservations.c.id).where(reservations.c.status == "held")))
                .scalars()
                .all()
            )
            for rid in rows:
                held = await self._close_hold(conn, rid, "released")
                if held is not None:
                    await self._unhold(conn, held[0], held[1], rid, held[2])
        return len(rows)

    async def entries(self, account_id: str) -> list[LedgerEntry]:
        async with self._db.connect() as conn:
            rows = (
                await conn.execute(
                    ledger_entries.select()
                    .where(ledger_entries.c.account_id == account_id)
                    .order_by(ledger_entries.c.id)
                )
            ).all()
        return [
            LedgerEntry(
                r.account_id, r.kind, r.amount_micros, r.hold_micros, r.reservation_id, r.request_id, r.note
            )
            for r in rows
        ]
