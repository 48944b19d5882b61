"""An in-memory ledger and account store for the domain's unit tests: the `LedgerStore` contract
(reserve all or none, settle or release a hold once) over plain dicts."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from kimiserve.domain.ports import Hold, InsufficientBalance, LedgerEntry, UsageRow


@dataclass
class MemoryLedger:
    balance: int = 0  # micro-USD
    holds: dict[str, Hold] = field(default_factory=dict)
    rows: list[UsageRow] = field(default_factory=list)
    ended: set[str] = field(default_factory=set)  # holds settled or released

    @property
    def held(self) -> int:
        return sum(h.amount_micros for h in self.holds.values())

    async def reserve(self, holds: list[Hold]) -> None:
        if self.balance - self.held < sum(h.amount_micros for h in holds):
            raise InsufficientBalance
        self.holds.update((h.id, h) for h in holds)

    def _end(self, hold: Hold) -> None:
        assert hold.id not in self.ended, f"hold {hold.id} ended twice"
        assert hold.id in self.holds, f"hold {hold.id} was never taken"
        del self.holds[hold.id]
        self.ended.add(hold.id)

    async def settle(self, hold: Hold | None, usage: UsageRow) -> None:
        if hold is not None:
            self._end(hold)
            self.balance -= usage.cost_micros
        self.rows.append(usage)

    async def release(self, hold: Hold) -> None:
        self._end(hold)

    async def top_up(self, account_id: str, amount_micros: int, note: str | None) -> int:
        self.balance += amount_micros
        return self.balance

    async def release_all_held(self, keep_owners: Collection[str] = ()) -> int:
        count = len(self.holds)
        self.holds.clear()
        return count

    async def entries(self, account_id: str) -> list[LedgerEntry]:
        return []
