"""Append-only, named migrations, each frozen DDL. Never edit one that has shipped: add the next.

A migration is the SQL text it was released with — not today's table definitions — so a
database created by 001 and brought forward by 002, 003, … ends with exactly the schema a new
database gets. `tables.py` describes the schema after the last migration, for queries only.
Each migration has its DDL per dialect: SQLite's (the embedded default; 001–003 are the text
first released) and PostgreSQL's (the same steps in its types: identity keys, DOUBLE PRECISION
for the float columns 003 drops). Migrations run under a lock — a PostgreSQL advisory lock, an
exclusive transaction on SQLite — so replicas starting together on an empty database migrate it
once; a database that records a migration this code does not know is refused (it is newer).
"""

from __future__ import annotations

import sqlite3
import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kimiserve.storage.sql import tables

_001_INITIAL = """
CREATE TABLE IF NOT EXISTS accounts (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    name VARCHAR(200) NOT NULL,
    balance_usd FLOAT,
    webhook_secret VARCHAR(100) NOT NULL,
    created_at FLOAT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id VARCHAR(32) NOT NULL PRIMARY KEY,
    account_id VARCHAR(36) NOT NULL REFERENCES accounts (id),
    name VARCHAR(200) NOT NULL,
    secret_hash VARCHAR(64) NOT NULL,
    created_at FLOAT NOT NULL,
    revoked_at FLOAT
);
CREATE TABLE IF NOT EXISTS tasks (
    task_uuid VARCHAR(36) NOT NULL PRIMARY KEY,
    account_id VARCHAR(36) NOT NULL,
    task_type VARCHAR(40) NOT NULL,
    delivery VARCHAR(20) NOT NULL,
    status VARCHAR(20) NOT NULL,
    request_json TEXT NOT NULL,
    results_json TEXT,
    error_json TEXT,
    created_at FLOAT NOT NULL,
    updated_at FLOAT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_tasks_account_id ON tasks (account_id);
CREATE TABLE IF NOT EXISTS usage_records (
    id INTEGER NOT NULL PRIMARY KEY,
    account_id VARCHAR(36) NOT NULL,
    request_id VARCHAR(64) NOT NULL,
    protocol VARCHAR(20) NOT NULL,
    model VARCHAR(200) NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    cost_usd FLOAT NOT NULL,
    created_at FLOAT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_usage_records_account_id ON usage_records (account_id);
"""

_002_WEBHOOKS_MEDIA = """
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id VARCHAR(100) NOT NULL PRIMARY KEY,
    account_id VARCHAR(36) NOT NULL,
    task_uuid VARCHAR(36) NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    status VARCHAR(20) NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at FLOAT NOT NULL,
    last_error TEXT,
    created_at FLOAT NOT NULL,
    updated_at FLOAT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_webhook_outbox_task_uuid ON webhook_outbox (task_uuid);
CREATE INDEX IF NOT EXISTS ix_webhook_outbox_next_attempt_at ON webhook_outbox (next_attempt_at);
CREATE TABLE IF NOT EXISTS media (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    account_id VARCHAR(36) NOT NULL,
    content_type VARCHAR(100) NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256 VARCHAR(64) NOT NULL,
    created_at FLOAT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_media_account_id ON media (account_id);
"""

# Money becomes integer micro-USD, kept as ledger entries beside the balance; keys get scopes,
# a model allowlist and limits; accounts get limits. Existing balances open the ledger.
_003_LEDGER_SCOPES_LIMITS = """
ALTER TABLE accounts ADD COLUMN balance_micros BIGINT;
ALTER TABLE accounts ADD COLUMN reserved_micros BIGINT NOT NULL DEFAULT 0;
UPDATE accounts SET balance_micros = CAST(ROUND(balance_usd * 1000000) AS BIGINT)
    WHERE balance_usd IS NOT NULL;
ALTER TABLE accounts DROP COLUMN balance_usd;
ALTER TABLE accounts ADD COLUMN rpm_limit INTEGER;
ALTER TABLE accounts ADD COLUMN tpm_limit INTEGER;
ALTER TABLE accounts ADD COLUMN concurrency_limit INTEGER;
ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT 'inference tasks:read media:upload';
ALTER TABLE api_keys ADD COLUMN models TEXT;
ALTER TABLE api_keys ADD COLUMN rpm_limit INTEGER;
ALTER TABLE api_keys ADD COLUMN tpm_limit INTEGER;
ALTER TABLE api_keys ADD COLUMN concurrency_limit INTEGER;
ALTER TABLE usage_records ADD COLUMN cost_micros BIGINT NOT NULL DEFAULT 0;
UPDATE usage_records SET cost_micros = CAST(ROUND(cost_usd * 1000000) AS BIGINT);
ALTER TABLE usage_records DROP COLUMN cost_usd;
ALTER TABLE usage_records ADD COLUMN key_id VARCHAR(32);
ALTER TABLE usage_records ADD COLUMN outcome VARCHAR(20) NOT NULL DEFAULT 'completed';
CREATE TABLE ledger_entries (
    id INTEGER NOT NULL PRIMARY KEY,
    account_id VARCHAR(36) NOT NULL,
    kind VARCHAR(20) NOT NULL,
    amount_micros BIGINT NOT NULL,
    hold_micros BIGINT NOT NULL,
    reservation_id VARCHAR(36),
    request_id VARCHAR(64),
    note TEXT,
    created_at FLOAT NOT NULL
);
CREATE INDEX ix_ledger_entries_account_id ON ledger_entries (account_id);
INSERT INTO ledger_entries (account_id, kind, amount_micros, hold_micros, note, created_at)
    SELECT id, 'adjustment', balance_micros, 0, 'opening balance (migration 003)', created_at
    FROM accounts WHERE balance_micros IS NOT NULL AND balance_micros != 0;
"""

# Task ownership (issue 13): a running task records the replica that runs it and a lease that
# replica renews; a hold records its replica; each replica keeps a row with its own lease.
_004_TASK_OWNERSHIP = """
ALTER TABLE tasks ADD COLUMN owner VARCHAR(100);
ALTER TABLE tasks ADD COLUMN lease_expires_at FLOAT;
CREATE INDEX ix_tasks_status_owner ON tasks (status, owner);
ALTER TABLE ledger_entries ADD COLUMN owner VARCHAR(100);
CREATE TABLE replicas (
    id VARCHAR(100) NOT NULL PRIMARY KEY,
    started_at FLOAT NOT NULL,
    lease_expires_at FLOAT NOT NULL
);
"""

# Usage rows record time to first token and decode time. `usage_hourly` keeps per-hour sums by
# account, model and key, kept exact by a trigger on every usage row (whichever code inserts it)
# and filled from the rows already there: the dashboard's week and month plots read a few thousand
# rollup rows instead of every usage row. Indexes for its shorter ranges, a task's usage and the
# recent tasks.
_005_USAGE_TIMING_HOURLY = """
ALTER TABLE usage_records ADD COLUMN ttft_ms INTEGER;
ALTER TABLE usage_records ADD COLUMN decode_ms INTEGER;
CREATE INDEX ix_usage_records_created_at ON usage_records (created_at);
CREATE INDEX ix_usage_records_account_created ON usage_records (account_id, created_at);
CREATE INDEX ix_usage_records_request_id ON usage_records (request_id);
CREATE INDEX ix_tasks_created_at ON tasks (created_at);
CREATE TABLE usage_hourly (
    hour INTEGER NOT NULL,
    account_id VARCHAR(36) NOT NULL,
    model VARCHAR(200) NOT NULL,
    key_id VARCHAR(32) NOT NULL,
    requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_micros BIGINT NOT NULL,
    ttft_ms_sum INTEGER NOT NULL,
    timed INTEGER NOT NULL,
    decode_tokens INTEGER NOT NULL,
    decode_ms INTEGER NOT NULL,
    PRIMARY KEY (hour, account_id, model, key_id)
);
CREATE INDEX ix_usage_hourly_account_hour ON usage_hourly (account_id, hour);
INSERT INTO usage_hourly
    SELECT CAST(created_at / 3600 AS INTEGER) * 3600, account_id, model, COALESCE(key_id, ''),
        COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_micros), 0, 0, 0, 0
    FROM usage_records GROUP BY 1, 2, 3, 4;
CREATE TRIGGER usage_hourly_add AFTER INSERT ON usage_records BEGIN
    INSERT INTO usage_hourly VALUES (
        CAST(NEW.created_at / 3600 AS INTEGER) * 3600, NEW.account_id, NEW.model, COALESCE(NEW.key_id, ''),
        1, NEW.prompt_tokens, NEW.completion_tokens, NEW.cost_micros,
        COALESCE(NEW.ttft_ms, 0), NEW.ttft_ms IS NOT NULL,
        CASE WHEN NEW.decode_ms > 0 THEN NEW.completion_tokens ELSE 0 END,
        CASE WHEN NEW.decode_ms > 0 THEN NEW.decode_ms ELSE 0 END
    ) ON CONFLICT (hour, account_id, model, key_id) DO UPDATE SET
        requests = requests + 1,
        prompt_tokens = prompt_tokens + excluded.prompt_tokens,
        completion_tokens = completion_tokens + excluded.completion_tokens,
        cost_micros = cost_micros + excluded.cost_micros,
        ttft_ms_sum = ttft_ms_sum + excluded.ttft_ms_sum,
        timed = timed + excluded.timed,
        decode_tokens = decode_tokens + excluded.decode_tokens,
        decode_ms = decode_ms + excluded.decode_ms;
END;
"""

# Refused and failed requests per minute, protocol and code (errors are not usage rows): the
# dashboard's errors-by-code plot. Counted in memory and added here every few seconds.
_006_ERROR_COUNTS = """
CREATE TABLE error_counts (
    minute INTEGER NOT NULL,
    protocol VARCHAR(20) NOT NULL,
    code VARCHAR(80) NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (minute, protocol, code)
);
"""

MIGRATIONS: list[tuple[str, str]] = [
    ("001_initial", _001_INITIAL),
    ("002_webhooks_media", _002_WEBHOOKS_MEDIA),
    ("003_ledger_scopes_limits", _003_LEDGER_SCOPES_LIMITS),
    ("004_task_ownership", _004_TASK_OWNERSHIP),
    ("005_usage_timing_hourly", _005_USAGE_TIMING_HOURLY),
    ("006_error_counts", _006_ERROR_COUNTS),
]

# ---- PostgreSQL: the same steps, frozen in its dialect ----------------------------------------

_PG_001_INITIAL = """
CREATE TABLE IF NOT EXISTS accounts (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    name VARCHAR(200) NOT NULL,
    balance_usd DOUBLE PRECISION,
    webhook_secret VARCHAR(100) NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id VARCHAR(32) NOT NULL PRIMARY KEY,
    account_id VARCHAR(36) NOT NULL REFERENCES accounts (id),
    name VARCHAR(200) NOT NULL,
    secret_hash VARCHAR(64) NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS tasks (
    task_uuid VARCHAR(36) NOT NULL PRIMARY KEY,
    account_id VARCHAR(36) NOT NULL,
    task_type VARCHAR(40) NOT NULL,
    delivery VARCHAR(20) NOT NULL,
    status VARCHAR(20) NOT NULL,
    request_json TEXT NOT NULL,
    results_json TEXT,
    error_json TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_tasks_account_id ON tasks (account_id);
CREATE TABLE IF NOT EXISTS usage_records (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    account_id VARCHAR(36) NOT NULL,
    request_id VARCHAR(64) NOT NULL,
    protocol VARCHAR(20) NOT NULL,
    model VARCHAR(200) NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_usage_records_account_id ON usage_records (account_id);
"""

_PG_002_WEBHOOKS_MEDIA = """
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id VARCHAR(100) NOT NULL PRIMARY KEY,
    account_id VARCHAR(36) NOT NULL,
    task_uuid VARCHAR(36) NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    status VARCHAR(20) NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    last_error TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_webhook_outbox_task_uuid ON webhook_outbox (task_uuid);
CREATE INDEX IF NOT EXISTS ix_webhook_outbox_next_attempt_at ON webhook_outbox (next_attempt_at);
CREATE TABLE IF NOT EXISTS media (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    account_id VARCHAR(36) NOT NULL,
    content_type VARCHAR(100) NOT NULL,
    size_bytes BIGINT NOT NULL,
    sha256 VARCHAR(64) NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_media_account_id ON media (account_id);
"""

_PG_003_LEDGER_SCOPES_LIMITS = """
ALTER TABLE accounts ADD COLUMN balance_micros BIGINT;
ALTER TABLE accounts ADD COLUMN reserved_micros BIGINT NOT NULL DEFAULT 0;
UPDATE accounts SET balance_micros = CAST(ROUND(CAST(balance_usd AS NUMERIC) * 1000000) AS BIGINT)
    WHERE balance_usd IS NOT NULL;
ALTER TABLE accounts DROP COLUMN balance_usd;
ALTER TABLE accounts ADD COLUMN rpm_limit INTEGER;
ALTER TABLE accounts ADD COLUMN tpm_limit INTEGER;
ALTER TABLE accounts ADD COLUMN concurrency_limit INTEGER;
ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT 'inference tasks:read media:upload';
ALTER TABLE api_keys ADD COLUMN models TEXT;
ALTER TABLE api_keys ADD COLUMN rpm_limit INTEGER;
ALTER TABLE api_keys ADD COLUMN tpm_limit INTEGER;
ALTER TABLE api_keys ADD COLUMN concurrency_limit INTEGER;
ALTER TABLE usage_records ADD COLUMN cost_micros BIGINT NOT NULL DEFAULT 0;
UPDATE usage_records SET cost_micros = CAST(ROUND(CAST(cost_usd AS NUMERIC) * 1000000) AS BIGINT);
ALTER TABLE usage_records DROP COLUMN cost_usd;
ALTER TABLE usage_records ADD COLUMN key_id VARCHAR(32);
ALTER TABLE usage_records ADD COLUMN outcome VARCHAR(20) NOT NULL DEFAULT 'completed';
CREATE TABLE ledger_entries (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    account_id VARCHAR(36) NOT NULL,
    kind VARCHAR(20) NOT NULL,
    amount_micros BIGINT NOT NULL,
    hold_micros BIGINT NOT NULL,
    reservation_id VARCHAR(36),
    request_id VARCHAR(64),
    note TEXT,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX ix_ledger_entries_account_id ON ledger_entries (account_id);
INSERT INTO ledger_entries (account_id, kind, amount_micros, hold_micros, note, created_at)
    SELECT id, 'adjustment', balance_micros, 0, 'opening balance (migration 003)', created_at
    FROM accounts WHERE balance_micros IS NOT NULL AND balance_micros != 0;
"""

_PG_004_TASK_OWNERSHIP = """
ALTER TABLE tasks ADD COLUMN owner VARCHAR(100);
ALTER TABLE tasks ADD COLUMN lease_expires_at DOUBLE PRECISION;
CREATE INDEX ix_tasks_status_owner ON tasks (status, owner);
ALTER TABLE ledger_entries ADD COLUMN owner VARCHAR(100);
CREATE TABLE replicas (
    id VARCHAR(100) NOT NULL PRIMARY KEY,
    started_at DOUBLE PRECISION NOT NULL,
    lease_expires_at DOUBLE PRECISION NOT NULL
);
"""

# The same rollup as SQLite's 005, its trigger a PL/pgSQL function (the body single-quoted, so the
# statement splitter keeps it whole).
_PG_005_USAGE_TIMING_HOURLY = """
ALTER TABLE usage_records ADD COLUMN ttft_ms INTEGER;
ALTER TABLE usage_records ADD COLUMN decode_ms INTEGER;
CREATE INDEX ix_usage_records_created_at ON usage_records (created_at);
CREATE INDEX ix_usage_records_account_created ON usage_records (account_id, created_at);
CREATE INDEX ix_usage_records_request_id ON usage_records (request_id);
CREATE INDEX ix_tasks_created_at ON tasks (created_at);
CREATE TABLE usage_hourly (
    hour BIGINT NOT NULL,
    account_id VARCHAR(36) NOT NULL,
    model VARCHAR(200) NOT NULL,
    key_id VARCHAR(32) NOT NULL,
    requests BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    ttft_ms_sum BIGINT NOT NULL,
    timed BIGINT NOT NULL,
    decode_tokens BIGINT NOT NULL,
    decode_ms BIGINT NOT NULL,
    PRIMARY KEY (hour, account_id, model, key_id)
);
CREATE INDEX ix_usage_hourly_account_hour ON usage_hourly (account_id, hour);
INSERT INTO usage_hourly
    SELECT CAST(FLOOR(created_at / 3600) AS BIGINT) * 3600, account_id, model, COALESCE(key_id, ''),
        COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_micros), 0, 0, 0, 0
    FROM usage_records GROUP BY 1, 2, 3, 4;
CREATE FUNCTION usage_hourly_add() RETURNS trigger LANGUAGE plpgsql AS '
BEGIN
    INSERT INTO usage_hourly VALUES (
        CAST(FLOOR(NEW.created_at / 3600) AS BIGINT) * 3600, NEW.account_id, NEW.model,
        COALESCE(NEW.key_id, ''''),
        1, NEW.prompt_tokens, NEW.completion_tokens, NEW.cost_micros,
        COALESCE(NEW.ttft_ms, 0), CASE WHEN NEW.ttft_ms IS NOT NULL THEN 1 ELSE 0 END,
        CASE WHEN NEW.decode_ms > 0 THEN NEW.completion_tokens ELSE 0 END,
        CASE WHEN NEW.decode_ms > 0 THEN NEW.decode_ms ELSE 0 END
    ) ON CONFLICT (hour, account_id, model, key_id) DO UPDATE SET
        requests = usage_hourly.requests + 1,
        prompt_tokens = usage_hourly.prompt_tokens + excluded.prompt_tokens,
        completion_tokens = usage_hourly.completion_tokens + excluded.completion_tokens,
        cost_micros = usage_hourly.cost_micros + excluded.cost_micros,
        ttft_ms_sum = usage_hourly.ttft_ms_sum + excluded.ttft_ms_sum,
        timed = usage_hourly.timed + excluded.timed,
        decode_tokens = usage_hourly.decode_tokens + excluded.decode_tokens,
        decode_ms = usage_hourly.decode_ms + excluded.decode_ms;
    RETURN NEW;
END';
CREATE TRIGGER usage_hourly_add AFTER INSERT ON usage_records
    FOR EACH ROW EXECUTE FUNCTION usage_hourly_add();
"""

_PG_006_ERROR_COUNTS = """
CREATE TABLE error_counts (
    minute BIGINT NOT NULL,
    protocol VARCHAR(20) NOT NULL,
    code VARCHAR(80) NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (minute, protocol, code)
);
"""

PG_MIGRATIONS: list[tuple[str, str]] = [
    ("001_initial", _PG_001_INITIAL),
    ("002_webhooks_media", _PG_002_WEBHOOKS_MEDIA),
    ("003_ledger_scopes_limits", _PG_003_LEDGER_SCOPES_LIMITS),
    ("004_task_ownership", _PG_004_TASK_OWNERSHIP),
    ("005_usage_timing_hourly", _PG_005_USAGE_TIMING_HOURLY),
    ("006_error_counts", _PG_006_ERROR_COUNTS),
]

# Any constant both sides agree on: the advisory lock every replica's migration takes first.
_PG_MIGRATION_LOCK = 0x6B696D69  # "kimi"


class SchemaTooNew(RuntimeError):
    """The database records migrations this kimiserve does not know: a newer release made it."""


def migrations_for(dialect: str) -> list[tuple[str, str]]:
    if dialect == "sqlite":
        return MIGRATIONS
    if dialect == "postgresql":
        return PG_MIGRATIONS
    raise ValueError(f"kimiserve has no migrations for the {dialect} dialect (use SQLite or PostgreSQL)")


def _statements(script: str) -> list[str]:
    """The script's statements; a `;` inside one (a trigger's body) does not end it."""
    statements, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending.strip().removesuffix(";").strip())
            pending = ""
    if pending.strip(" \n;"):
        statements.append(pending.strip().removesuffix(";").strip())
    return statements


def recorded(conn: Connection) -> set[str] | None:
    """The migrations the database records; None when it has no schema_migrations table yet."""
    if not sa.inspect(conn).has_table("schema_migrations"):
        return None
    return set(conn.execute(sa.select(tables.schema_migrations.c.name)).scalars())


def check_not_newer(done: set[str], dialect: str) -> None:
    unknown = sorted(done - {name for name, _ in migrations_for(dialect)})
    if unknown:
        raise SchemaTooNew(
            f"The database has migration(s) {', '.join(unknown)} that this kimiserve does not know: "
            "a newer kimiserve migrated it. Run that release (or newer); refusing to start."
        )


def is_current(conn: Connection) -> bool:
    """No migration pending (and the database not newer than the code): no lock needed."""
    done = recorded(conn)
    if done is None:
        return False
    check_not_newer(done, conn.dialect.name)
    return all(name in done for name, _ in migrations_for(conn.dialect.name))


def migrate(conn: Connection) -> list[str]:
    """Apply every migration not yet recorded, in the caller's transaction; return the names applied.

    On PostgreSQL this first takes a transaction-scoped advisory lock, so a second replica waits
    here and then finds nothing left to do; on SQLite the caller holds an exclusive transaction.
    """
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
    tables.schema_migrations.create(conn, checkfirst=True)
    done = set(conn.execute(sa.select(tables.schema_migrations.c.name)).scalars())
    check_not_newer(done, dialect)
    applied = []
    for name, script in migrations_for(dialect):
        if name in done:
            continue
        for statement in _statements(script):
            conn.exec_driver_sql(statement)
        conn.execute(tables.schema_migrations.insert().values(name=name, applied_at=time.time()))
        applied.append(name)
    return applied
