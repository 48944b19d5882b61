"""The ledger on SQLite, its transactions committed in groups by one dedicated thread.

aiosqlite crosses into its thread once per statement (begin, each statement, commit: five
crossings for a settlement), and the ledger is on every metered request's path twice. Here the
works waiting at a moment (holds, settlements, releases of concurrent requests) run as one
transaction in one crossing, each in its own savepoint, so each still succeeds or fails alone;
on a connection of its own (WAL lets it write beside the SQLAlchemy pool; the process's write
lock keeps it from waiting in SQLite's busy handler). Same semantics as `SqlLedgerStore`, which
serves the other databases.

When nothing is queued and the write lock is free (a request alone), its work commits at once on
the event loop's thread instead, on a second connection that never waits (`busy_timeout=0`: a
lock held elsewhere sends the work to the queue) and never checkpoints (the thread does, every
`INLINE_CHECKPOINT_EVERY` inline commits): a commit costs ~60 µs of the loop, where the crossing
to the thread and back cost a lone request ~200 µs more (bench/gateway.py, concurrency 1).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from kimiserve.domain.ports import Hold, InsufficientBalance, LedgerEntry, UsageRow
from kimiserve.errors import ServiceUnavailable

T = TypeVar("T")

log = logging.getLogger(__name__)

INLINE_CHECKPOINT_EVERY = 500

_ENTRY = (
    "INSERT INTO ledger_entries (account_id, kind, amount_micros, hold_micros, reservation_id, request_id, "
    "note, created_at, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_USAGE = (
    "INSERT INTO usage_records (account_id, key_id, request_id, protocol, model, prompt_tokens, "
    "completion_tokens, cached_tokens, reasoning_tokens, cost_micros, outcome, created_at, ttft_ms, "
    "decode_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _usage_values(u: UsageRow) -> tuple[object, ...]:
    return (
        u.account_id,
        u.key_id,
        u.request_id,
        u.protocol,
        u.model,
        u.prompt_tokens,
        u.completion_tokens,
        u.cached_tokens,
        u.reasoning_tokens,
        u.cost_micros,
        u.outcome,
        time.time(),
        u.ttft_ms,
        u.decode_ms,
    )


def _release(conn: sqlite3.Connection, hold: Hold) -> None:
    conn.execute(
        "UPDATE accounts SET reserved_micros = reserved_micros - ? WHERE id = ?",
        (hold.amount_micros, hold.account_id),
    )
    conn.execute(
        _ENTRY,
        (
            hold.account_id,
            "release",
            0,
            -hold.amount_micros,
            hold.id,
            hold.request_id,
            None,
            time.time(),
            None,
        ),
    )


@dataclass(frozen=True)
class _Failed:
    """A work's exception, carried out of the batch to its own caller."""

    error: Exception


def _as_unavailable(exc: Exception) -> _Failed:
    if isinstance(exc, sqlite3.OperationalError) and "database is locked" in str(exc):
        unavailable = ServiceUnavailable("The database is busy; try again shortly.")
        unavailable.__cause__ = exc
        return _Failed(unavailable)
    return _Failed(exc)


class SqliteLedgerStore:
    def __init__(self, path: str, owner: str | None = None, write_lock: asyncio.Lock | None = None) -> None:
        self._owner = owner  # the replica whose holds these are (recorded on each reservation)
        # The lock the task store's writes take too: transactions queue on it instead of sleeping
        # in SQLite's busy handler (1, 2, 5, 10… ms between tries), which under load cost a
        # metered request more than its two ledger transactions themselves.
        self._write_lock = write_lock if write_lock is not None else asyncio.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._drainer: asyncio.Task[None] | None = None  # running while works wait
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._inline = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._inline.execute("PRAGMA busy_timeout=0")
        self._inline.execute("PRAGMA wal_autocheckpoint=0")
        self._inline.execute("PRAGMA synchronous=NORMAL")
        self._inline_commits = 0
        self._checkpoint: asyncio.Future[Any] | None = None

    async def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in a transaction of its own, as far as its caller can tell: it commits with
        whatever other work is waiting (group commit: one BEGIN … COMMIT and one thread crossing
        for all of them), each in a savepoint, so one work's exception rolls back that work alone
        and is raised to its caller only."""
        loop = asyncio.get_running_loop()
        if self._drainer is None and not self._write_lock.locked():
            # No await from here to the commit: nothing else can take the write lock meanwhile.
            try:
                [outcome] = self._commit([work], self._inline)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                # Another process or connection holds SQLite's write lock: wait in the queue.
            else:
                self._inline_commits += 1
                if self._inline_commits >= INLINE_CHECKPOINT_EVERY and self._checkpoint is None:
                    self._inline_commits = 0
                    self._checkpoint = loop.run_in_executor(self._executor, self._passive_checkpoint)
                    self._checkpoint.add_done_callback(self._checkpointed)
                if isinstance(outcome, _Failed):
                    raise outcome.error
                result: T = outcome
                return result
        done: asyncio.Future[Any] = loop.create_future()
        self._pending.append((work, done))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        queued: T = await done
        return queued

    def _passive_checkpoint(self) -> None:
        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _checkpointed(self, future: asyncio.Future[Any]) -> None:
        self._checkpoint = None
        if not future.cancelled() and future.exception() is not None:
            log.warning("ledger checkpoint failed: %s", future.exception())

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                works = [w for w, _ in batch]
                try:
                    async with self._write_lock:
                        outcomes = await loop.run_in_executor(self._executor, self._commit, works)
                except Exception as exc:  # the transaction itself failed: every work with it
                    outcomes = [_as_unavailable(exc)] * len(batch)
                except BaseException:  # the loop is going away: nobody is left waiting for certain
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(ServiceUnavailable("The server is shutting down."))
                    raise
                for (_, done), outcome in zip(batch, outcomes, strict=True):
                    if done.done():  # its caller was cancelled
                        continue
                    if isinstance(outcome, _Failed):
                        done.set_exception(outcome.error)
                    else:
                        done.set_result(outcome)
        finally:
            self._drainer = None

    def _commit(
        self, works: list[Callable[[sqlite3.Connection], Any]], conn: sqlite3.Connection | None = None
    ) -> list[Any]:
        conn = conn if conn is not None else self._conn
        conn.execute("BEGIN IMMEDIATE")
        outcomes: list[Any] = []
        try:
            if len(works) == 1:  # alone: its transaction is its own, no savepoint needed
                try:
                    outcomes.append(works[0](conn))
                except Exception as exc:
                    conn.execute("ROLLBACK")
                    return [_Failed(exc)]
                conn.execute("COMMIT")
                return outcomes
            for work in works:
                conn.execute("SAVEPOINT work")
                try:
                    outcomes.append(work(conn))
                except Exception as exc:
                    conn.execute("ROLLBACK TO work")
                    outcomes.append(_Failed(exc))
                conn.execute("RELEASE work")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    async def reserve(self, holds: list[Hold]) -> None:
        account_id = holds[0].account_id
        total = sum(h.amount_micros for h in holds)

        def work(conn: sqlite3.Connection) -> None:
            taken = conn.execute(
                "UPDATE accounts SET reserved_micros = reserved_micros + ? WHERE id = ? "
                "AND balance_micros IS NOT NULL AND balance_micros - reserved_micros >= ?",
                (total, account_id, total),
            )
            if not taken.rowcount:
                raise InsufficientBalance(account_id)
            now = time.time()
            conn.executemany(
                _ENTRY,
                [
                    (
                        account_id,
                        "reservation",
                        0,
                        h.amount_micros,
                        h.id,
                        h.request_id,
                        None,
                        now,
                        self._owner,
                    )
                    for h in holds
                ],
            )

        await self._transaction(work)

    async def settle(self, hold: Hold | None, usage: UsageRow) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute(_USAGE, _usage_values(usage))
            if hold is None:
                return
            conn.execute(
                "UPDATE accounts SET balance_micros = balance_micros - ?, "
                "reserved_micros = reserved_micros - ? WHERE id = ?",
                (usage.cost_micros, hold.amount_micros, hold.account_id),
            )
            conn.execute(
                _ENTRY,
                (
                    hold.account_id,
                    "settlement",
                    -usage.cost_micros,
                    -hold.amount_micros,
                    hold.id,
                    hold.request_id,
                    usage.outcome,
                    time.time(),
                    None,
                ),
            )

        await self._transaction(work)

    async def release(self, hold: Hold) -> None:
        await self._transaction(lambda conn: _release(conn, hold))

    async def top_up(self, account_id: str, amount_micros: int, note: str | None) -> int:
        def work(conn: sqlite3.Connection) -> int:
            updated = conn.execute(
                "UPDATE accounts SET balance_micros = COALESCE(balance_micros, 0) + ? WHERE id = ?",
                (amount_micros, account_id),
            )
            if not updated.rowcount:
                raise KeyError(account_id)
            conn.execute(_ENTRY, (account_id, "topup", amount_micros, 0, None, None, note, time.time(), None))
            [balance] = conn.execute(
                "SELECT balance_micros FROM accounts WHERE id = ?", (account_id,)
            ).fetchone()
            return int(balance)

        return await self._transaction(work)

    async def release_all_held(self, keep_owners: Collection[str] = ()) -> int:
        def work(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                "SELECT reservation_id, MIN(account_id), MIN(request_id), SUM(hold_micros), MIN(owner) "
                "FROM ledger_entries WHERE reservation_id IS NOT NULL "
                "GROUP BY reservation_id HAVING SUM(hold_micros) != 0"
            ).fetchall()
            released = 0
            for rid, account_id, request_id, amount, owner in rows:
                if owner is None or owner not in keep_owners:
                    _release(conn, Hold(rid, account_id, request_id or "", int(amount)))
                    released += 1
            return released

        return await self._transaction(work)

    async def entries(self, account_id: str) -> list[LedgerEntry]:
        def work(conn: sqlite3.Connection) -> list[LedgerEntry]:
            rows = conn.execute(
                "SELECT account_id, kind, amount_micros, hold_micros, reservation_id, request_id, note "
                "FROM ledger_entries WHERE account_id = ? ORDER BY id",
                (account_id,),
            ).fetchall()
            return [LedgerEntry(*row) for row in rows]

        return await self._transaction(work)

    async def aclose(self) -> None:
        self._inline.close()
        await asyncio.get_running_loop().run_in_executor(self._executor, self._conn.close)
        self._executor.shutdown(wait=True)
