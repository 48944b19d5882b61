"""The ledger in SQL: balances, holds and their entries, always moved in one transaction.

A hold is taken with one conditional UPDATE (`balance - reserved >= amount`), so concurrent
reservations can never together exceed the balance, on SQLite and PostgreSQL alike. Holds are
ledger entries (`hold_micros`), not rows of their own: a hold is open while the entries of its
`reservation_id` do not sum to 0, which is how a restart finds the ones a crash left behind.
"""

from __future__ import annotations

import time
from collections.abc import Collection

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kimiserve.domain.ports import Hold, InsufficientBalance, LedgerEntry, UsageRow
from kimiserve.storage.sql.tables import accounts, ledger_entries, usage_records

# The statements of the hot path, built once: a statement rebuilt per call costs about as much
# again as running it (measured with SQLite: 0.61 ms against 0.36 ms per update).
_AMOUNT = sa.bindparam("amount", type_=sa.BigInteger)
_HOLD = sa.bindparam("hold", type_=sa.BigInteger)
_ACCOUNT = sa.bindparam("account_id", type_=sa.String)
_TAKE_HOLD = (
    accounts.update()
    .where(
        accounts.c.id == _ACCOUNT,
        accounts.c.balance_micros.is_not(None),
        accounts.c.balance_micros - accounts.c.reserved_micros >= _HOLD,
    )
    .values(reserved_micros=accounts.c.reserved_micros + _HOLD)
)
_CHARGE = (
    accounts.update()
    .where(accounts.c.id == _ACCOUNT)
    .values(
        balance_micros=accounts.c.balance_micros - _AMOUNT,
        reserved_micros=accounts.c.reserved_micros - _HOLD,
    )
)
_DROP_HOLD = (
    accounts.update()
    .where(accounts.c.id == _ACCOUNT)
    .values(reserved_micros=accounts.c.reserved_micros - _HOLD)
)
_ENTRY = ledger_entries.insert()
_USAGE = usage_records.insert()


def _entry(
    account_id: str,
    kind: str,
    *,
    amount: int = 0,
    hold: int = 0,
    reservation_id: str | None = None,
    request_id: str | None = None,
    note: str | None = None,
    owner: str | None = None,
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
        "owner": owner,
    }


class SqlLedgerStore:
    def __init__(self, db: AsyncEngine, owner: str | None = None) -> None:
        self._db = db
        self._owner = owner  # the replica whose holds these are (recorded on each reservation)

    async def reserve(self, holds: list[Hold]) -> None:
        account_id = holds[0].account_id
        total = sum(h.amount_micros for h in holds)
        async with self._db.begin() as conn:
            result = await conn.execute(_TAKE_HOLD, {"account_id": account_id, "hold": total})
            if not result.rowcount:
                raise InsufficientBalance(account_id)
            await conn.execute(
                _ENTRY,
                [
                    _entry(
                        account_id,
                        "reservation",
                        hold=h.amount_micros,
                        reservation_id=h.id,
                        request_id=h.request_id,
                        owner=self._owner,
                    )
                    for h in holds
                ],
            )

    async def settle(self, hold: Hold | None, usage: UsageRow) -> None:
        async with self._db.begin() as conn:
            await conn.execute(_USAGE, {**usage.__dict__, "created_at": time.time()})
            if hold is None:
                return
            await conn.execute(
                _CHARGE,
                {"account_id": hold.account_id, "amount": usage.cost_micros, "hold": hold.amount_micros},
            )
            await conn.execute(
                _ENTRY,
                _entry(
                    hold.account_id,
                    "settlement",
                    amount=-usage.cost_micros,
                    hold=-hold.amount_micros,
                    reservation_id=hold.id,
                    request_id=hold.request_id,
                    note=usage.outcome,
                ),
            )

    async def release(self, hold: Hold) -> None:
        async with self._db.begin() as conn:
            await self._release(conn, hold)

    async def _release(self, conn: AsyncConnection, hold: Hold) -> None:
        await conn.execute(_DROP_HOLD, {"account_id": hold.account_id, "hold": hold.amount_micros})
        await conn.execute(
            _ENTRY,
            _entry(
                hold.account_id,
                "release",
                hold=-hold.amount_micros,
                reservation_id=hold.id,
                request_id=hold.request_id,
            ),
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
            balance: int = (
                await conn.execute(sa.select(accounts.c.balance_micros).where(accounts.c.id == account_id))
            ).scalar_one()
        return balance

    async def release_all_held(self, keep_owners: Collection[str] = ()) -> int:
        held = (
            sa.select(
                ledger_entries.c.reservation_id,
                sa.func.min(ledger_entries.c.account_id).label("account_id"),
                sa.func.min(ledger_entries.c.request_id).label("request_id"),
                sa.func.sum(ledger_entries.c.hold_micros).label("amount"),
                sa.func.min(ledger_entries.c.owner).label("owner"),
            )
            .where(ledger_entries.c.reservation_id.is_not(None))
            .group_by(ledger_entries.c.reservation_id)
            .having(sa.func.sum(ledger_entries.c.hold_micros) != 0)
        )
        async with self._db.begin() as conn:
            rows = [
                r for r in (await conn.execute(held)).all() if r.owner is None or r.owner not in keep_owners
            ]
            for r in rows:
                await self._release(
                    conn, Hold(r.reservation_id, r.account_id, r.request_id or "", int(r.amount))
                )
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
