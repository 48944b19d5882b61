"""getResponse latency with many tasks stored, on SQLite and on PostgreSQL, and the cross-replica
wake-up time (completion on replica A → reply on replica B, over Redis pub/sub).

    .venv/bin/python bench/tasks.py [--stored 100000] [--requests 1000] [--wakeups 50]

Starts real servers: PostgreSQL and Redis on loopback (tests/dbservers.py), kimiserve with the
scripted fake engine. One real task is run, then `--stored` copies of its row (new UUIDs, the
same account) are bulk-inserted, and `--requests` getResponse calls for random finished tasks
are sent one at a time over HTTP keep-alive: p50/p99 of their latency, per database. Then two
replicas on PostgreSQL + Redis: a task is submitted on A while a getResponse for it waits on B;
the time from A storing the result (`tasks.updated_at`) to B's reply arriving, p50/p99 (B's
getResponse is sent right after A acknowledges; the fake engine takes ~0.3 s, so B is waiting).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.dbservers import PostgresServer, RedisServer
from tests.serverproc import ServerProcess, cli

COLUMNS = ("task_uuid", "account_id", "task_type", "delivery", "status", "request_json", "results_json",
           "error_json", "created_at", "updated_at", "owner", "lease_expires_at")  # fmt: skip


def task(**extra: Any) -> dict[str, Any]:
    return {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "kimi-k2.6",
        "messages": [{"role": "user", "content": "one two three four five six seven eight"}],
        "settings": {"maxTokens": 8},
        **extra,
    }


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def fetch_row(db_url: str | None, sqlite_path: Path | None, task_uuid: str) -> tuple[Any, ...]:
    query = f"SELECT {', '.join(COLUMNS)} FROM tasks WHERE task_uuid = '{task_uuid}'"
    if sqlite_path is not None:
        with sqlite3.connect(sqlite_path) as db:
            return tuple(db.execute(query).fetchone())
    assert db_url is not None
    conn = await asyncpg.connect(db_url.replace("+asyncpg", ""))
    try:
        return tuple(await conn.fetchrow(query))
    finally:
        await conn.close()


async def store_copies(
    db_url: str | None, sqlite_path: Path | None, row: tuple[Any, ...], n: int
) -> list[str]:
    uuids = [str(uuid.uuid4()) for _ in range(n)]
    rows = [(u, *row[1:]) for u in uuids]
    if sqlite_path is not None:
        with sqlite3.connect(sqlite_path) as db:
            db.executemany(
                f"INSERT INTO tasks ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", rows
            )
        with sqlite3.connect(sqlite_path) as db:  # the steady state: rows in the database file, not the WAL
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    else:
        assert db_url is not None
        conn = await asyncpg.connect(db_url.replace("+asyncpg", ""))
        try:
            await conn.copy_records_to_table("tasks", records=rows, columns=list(COLUMNS))
            await conn.execute("ANALYZE tasks")
        finally:
            await conn.close()
    return uuids


async def get_response_latencies(base_url: str, key: str, uuids: list[str], requests: int) -> list[float]:
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as http:
        for u in random.sample(uuids, 20):  # warm up
            await http.post("/v1", json=[{"taskType": "getResponse", "taskUUID": u}])
        out = []
        for u in random.sample(uuids, requests):
            started = time.perf_counter()
            reply = await http.post("/v1", json=[{"taskType": "getResponse", "taskUUID": u}])
            out.append((time.perf_counter() - started) * 1000)
            if reply.status_code != 200 or reply.json()["data"][0]["status"] != "success":
                raise SystemExit(f"unexpected reply: {reply.status_code} {reply.text[:200]}")
        return out


def one_database(name: str, env: dict[str, str], stored: int, requests: int) -> list[float]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"bench-tasks-{name}-"))
    key = cli(data_dir, "keys", "create", "--name", "bench", env=env).strip().splitlines()[-1]
    server = ServerProcess(data_dir, env={"KIMISERVE_ENGINE": "fake", **env})
    server.start()
    try:
        first = task()
        reply = httpx.post(
            f"{server.base_url}/v1", json=[first], headers={"Authorization": f"Bearer {key}"}, timeout=60
        )
        assert reply.status_code == 200, reply.text
        db_url = env.get("KIMISERVE_DATABASE_URL")
        sqlite_path = None if db_url else data_dir / "kimiserve.db"
        row = asyncio.run(fetch_row(db_url, sqlite_path, first["taskUUID"]))
        uuids = asyncio.run(store_copies(db_url, sqlite_path, row, stored))
        return asyncio.run(get_response_latencies(server.base_url, key, uuids, requests))
    finally:
        server.stop()


async def wakeups(a: ServerProcess, b: ServerProcess, key: str, db_url: str, n: int) -> list[float]:
    headers = {"Authorization": f"Bearer {key}"}
    conn = await asyncpg.connect(db_url.replace("+asyncpg", ""))
    out = []
    try:
        async with httpx.AsyncClient(headers=headers, timeout=60) as http:
            for _ in range(n):
                t = task(deliveryMethod="async")  # ~0.3 s of fake generation: B waits before A ends it
                ack = await http.post(f"{a.base_url}/v1", json=[t])
                assert ack.status_code == 200 and "data" in ack.json(), ack.text
                reply = await http.post(
                    f"{b.base_url}/v1", json=[{"taskType": "getResponse", "taskUUID": t["taskUUID"]}]
                )
                answered = time.time()
                assert reply.json()["data"][0]["status"] == "success", reply.text
                finished = await conn.fetchval(
                    "SELECT updated_at FROM tasks WHERE task_uuid = $1", t["taskUUID"]
                )
                out.append((answered - finished) * 1000)
    finally:
        await conn.close()
    return out


def cross_replica(pg: PostgresServer, redis: RedisServer, n: int) -> list[float]:
    env = {
        "KIMISERVE_DATABASE_URL": pg.create_database(),
        "KIMISERVE_REDIS_URL": redis.url(),
        "KIMISERVE_ENGINE": "fake",
        "KIMISERVE_FAKE_DELAY_S": "0.03",
    }
    a = ServerProcess(Path(tempfile.mkdtemp(prefix="bench-a-")), env={**env, "KIMISERVE_REPLICA_ID": "a"})
    b = ServerProcess(Path(tempfile.mkdtemp(prefix="bench-b-")), env={**env, "KIMISERVE_REPLICA_ID": "b"})
    a.start()
    b.start()
    try:
        key = cli(a.data_dir, "keys", "create", "--name", "bench", env=env).strip().splitlines()[-1]
        return asyncio.run(wakeups(a, b, key, env["KIMISERVE_DATABASE_URL"], n))
    finally:
        a.stop()
        b.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stored", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--wakeups", type=int, default=50)
    args = parser.parse_args()
    pg, redis = PostgresServer.start(), RedisServer.start()
    try:
        rows = []
        for name, env in (("SQLite", {}), ("PostgreSQL", {"KIMISERVE_DATABASE_URL": pg.create_database()})):
            ms = one_database(name, env, args.stored, args.requests)
            rows.append((f"getResponse, finished task, {args.stored:,} stored, {name}", ms))
        rows.append(("cross-replica wake-up (A stores the result → B replies), PostgreSQL + Redis",
                     cross_replica(pg, redis, args.wakeups)))  # fmt: skip
        print("| measurement | n | p50 ms | p99 ms | mean ms |")
        print("|---|---|---|---|---|")
        for label, ms in rows:
            print(
                f"| {label} | {len(ms)} | {pct(ms, 50):.2f} | {pct(ms, 99):.2f} | {statistics.mean(ms):.2f} |"
            )
    finally:
        pg.stop()
        redis.stop()


if __name__ == "__main__":
    main()
