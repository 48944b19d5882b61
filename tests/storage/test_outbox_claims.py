"""The webhook outbox on SQLite and a real PostgreSQL: two replicas' workers (two engines)
claiming at the same time each get a delivery at most once per lease, and every due one is
claimed."""

from __future__ import annotations

import asyncio

from kimiserve.storage.sql.database import open_database
from kimiserve.storage.sql.outbox import SqlOutboxStore


async def test_two_replicas_claim_each_due_delivery_once(database_url: str) -> None:
    a_db, b_db = await open_database(database_url), await open_database(database_url)
    try:
        a, b = SqlOutboxStore(a_db), SqlOutboxStore(b_db)
        for i in range(60):
            assert await (a if i % 2 else b).enqueue(f"msg_{i}", "acct", f"t{i}", "http://x", "{}")
        assert not await a.enqueue("msg_0", "acct", "t0", "http://x", "{}")  # the same id: a no-op

        async def worker(store: SqlOutboxStore) -> list[str]:
            claimed: list[str] = []
            while batch := await store.claim_due(7, lease_s=60):
                claimed += [d.id for d in batch]
            return claimed

        results = await asyncio.gather(*(worker(s) for s in (a, b, a, b)))
        claimed = [i for r in results for i in r]
        assert sorted(claimed) == sorted(f"msg_{i}" for i in range(60))  # each once, none left
        assert await a.claim_due(10, lease_s=60) == []  # leased: not due again before the lease ends
        await a.release("msg_5")  # given back (a shutdown mid-attempt): due again, to one claimer
        again = await asyncio.gather(b.claim_due(10, lease_s=60), a.claim_due(10, lease_s=60))
        assert sorted(d.id for batch in again for d in batch) == ["msg_5"]
    finally:
        await a_db.dispose()
        await b_db.dispose()
