"""Task ownership across replicas: this replica's lease, renewed while it lives, and the sweep
that ends what a dead replica left.

At start-up a replica ends the tasks its own previous run left (its id is stable across restarts)
and those of any replica whose lease has expired; then, periodically, only the latter. Each such
task ends `taskInterrupted` (its webhook, if any, is told), and the credit holds of replicas that
are not live are released. A live replica's tasks and holds are never touched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from kimiserve.domain.ports import LedgerStore, TaskRow
from kimiserve.domain.tasks import INTERRUPTED, Tasks, error_record

log = logging.getLogger(__name__)


class Ownership:
    def __init__(
        self,
        tasks: Tasks,
        ledger: LedgerStore,
        owner: str,
        lease_s: float,
        on_interrupted: Callable[[TaskRow], Awaitable[None]],
    ) -> None:
        self.tasks = tasks
        self.ledger = ledger
        self.owner = owner
        self.lease_s = lease_s
        self._on_interrupted = on_interrupted
        self._loop: asyncio.Task[Any] | None = None

    async def recover(self) -> int:
        """At start-up: take the lease, then end what this replica's previous run and any expired
        replica left. Returns the number of tasks ended."""
        await self.tasks.store.renew_lease()
        return await self.sweep(including_own=True)

    async def sweep(self, *, including_own: bool = False) -> int:
        ended = await self.tasks.store.end_abandoned(error_record(INTERRUPTED), including_own=including_own)
        for row in ended:
            await self.tasks.ended_elsewhere(row.task_uuid)
            await self._on_interrupted(row)
        if ended:
            log.warning("ended %d task(s) whose replica stopped", len(ended))
        live = await self.tasks.store.live_replicas()
        if including_own:
            live.discard(self.owner)
        released = await self.ledger.release_all_held(keep_owners=live)
        if released:
            log.warning("released %d credit hold(s) left by a stopped replica", released)
        return len(ended)

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run())

    async def _run(self) -> None:
        renew_every = self.lease_s / 3
        beats = 0
        while True:
            await asyncio.sleep(renew_every)
            try:
                await self.tasks.store.renew_lease()
                beats += 1
                if beats % 2 == 0:  # a sweep every two renewals (2/3 of a lease)
                    await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("renewing the task lease failed; retrying")

    async def aclose(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
            self._loop = None
