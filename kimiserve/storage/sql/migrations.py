"""Append-only, named migrations, each frozen DDL. Never edit one that has shipped: add the next.

A migration is the SQL text it was released with — not today's table definitions — so a
database created by 001 and brought forward by 002, 003, … ends with exactly the schema a new
database gets. `tables.py` describes the schema after the last migration, for queries only.
The DDL is written for SQLite (the embedded default); the replicas issue adds PostgreSQL's.
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

# Usage rows record time to first token and decode time. `usage_hourly` keeps per-hour sums by
# account, model and key, kept exact by a trigger on every usage row (whichever code inserts it)
# and filled from the rows already there: the dashboard's week and month plots read a few thousand
# rollup rows instead of every usage row. Indexes for its shorter ranges, a task's usage and the
# recent tasks.
_004_USAGE_TIMING_HOURLY = """
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

MIGRATIONS: list[tuple[str, str]] = [
    ("001_initial", _001_INITIAL),
    ("002_webhooks_media", _002_WEBHOOKS_MEDIA),
    ("003_ledger_scopes_limits", _003_LEDGER_SCOPES_LIMITS),
    ("004_usage_timing_hourly", _004_USAGE_TIMING_HOURLY),
]


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


def migrate(conn: Connection) -> list[str]:
    """Apply every migration not yet recorded, in one transaction; return the names applied."""
    tables.schema_migrations.create(conn, checkfirst=True)
    done = set(conn.execute(sa.select(tables.schema_migrations.c.name)).scalars())
    applied = []
    for name, script in MIGRATIONS:
        if name in done:
            continue
        for statement in _statements(script):
            conn.exec_driver_sql(statement)
        conn.execute(tables.schema_migrations.insert().values(name=name, applied_at=time.time()))
        applied.append(name)
    return applied
