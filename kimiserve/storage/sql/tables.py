"""Every table kimiserve stores, in one place (SQLAlchemy Core), as the migrations leave them.

For queries only: the schema itself is made by the frozen DDL in `migrations.py`.
Money columns are integer micro-USD (`*_micros`); limits NULL mean "no limit".
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("webhook_secret", sa.String(100), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    # NULL balance = unmetered (the default for a self-hosted operator's own account).
    sa.Column("balance_micros", sa.BigInteger, nullable=True),
    sa.Column("reserved_micros", sa.BigInteger, nullable=False),
    sa.Column("rpm_limit", sa.Integer, nullable=True),
    sa.Column("tpm_limit", sa.Integer, nullable=True),
    sa.Column("concurrency_limit", sa.Integer, nullable=True),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # public key id, part of the key text
    sa.Column("account_id", sa.String(36), sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),  # sha256 hex of the whole key
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
    sa.Column("scopes", sa.Text, nullable=False),  # space-separated
    sa.Column("models", sa.Text, nullable=True),  # JSON array of model names; NULL = every model
    sa.Column("rpm_limit", sa.Integer, nullable=True),
    sa.Column("tpm_limit", sa.Integer, nullable=True),
    sa.Column("concurrency_limit", sa.Integer, nullable=True),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("task_uuid", sa.String(36), primary_key=True),
    sa.Column("account_id", sa.String(36), nullable=False, index=True),
    sa.Column("task_type", sa.String(40), nullable=False),
    sa.Column("delivery", sa.String(20), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # processing | success | error
    sa.Column("request_json", sa.Text, nullable=False),
    sa.Column("results_json", sa.Text, nullable=True),
    sa.Column("error_json", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    # 004: the replica running a `processing` task, and until when its lease holds.
    sa.Column("owner", sa.String(100), nullable=True),
    sa.Column("lease_expires_at", sa.Float, nullable=True),
)

usage_records = sa.Table(
    "usage_records",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.String(36), nullable=False, index=True),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("protocol", sa.String(20), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("cached_tokens", sa.Integer, nullable=False),
    sa.Column("reasoning_tokens", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("cost_micros", sa.BigInteger, nullable=False),
    sa.Column("key_id", sa.String(32), nullable=True),
    sa.Column("outcome", sa.String(20), nullable=False),  # completed | disconnected | interrupted
    sa.Column("ttft_ms", sa.Integer, nullable=True),  # 004: time to first token
    sa.Column("decode_ms", sa.Integer, nullable=True),  # 004: first token to the end
)

schema_migrations = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("applied_at", sa.Float, nullable=False),
)

# ---- 002_webhooks_media ---------------------------------------------------------------------

webhook_outbox = sa.Table(
    "webhook_outbox",
    metadata,
    sa.Column("id", sa.String(100), primary_key=True),  # the `webhook-id`, the same on every attempt
    sa.Column("account_id", sa.String(36), nullable=False),
    sa.Column("task_uuid", sa.String(36), nullable=False, index=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),  # the exact JSON text that is signed and sent
    sa.Column("status", sa.String(20), nullable=False),  # pending | delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False),
    # When the next attempt is due; a worker claims a row by moving this forward (a lease).
    sa.Column("next_attempt_at", sa.Float, nullable=False, index=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

media = sa.Table(
    "media",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),  # the imageUUID
    sa.Column("account_id", sa.String(36), nullable=False, index=True),
    sa.Column("content_type", sa.String(100), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# ---- 003_ledger_scopes_limits ---------------------------------------------------------------

# Every movement of money. `amount_micros` moves the balance (top-up +, settlement -,
# adjustment ±), `hold_micros` moves the reserved amount (reservation +, release and
# settlement -): per account, the amounts sum to the balance and the holds to `reserved_micros`.
# A hold is open while the holds of its `reservation_id` do not sum to 0.
ledger_entries = sa.Table(
    "ledger_entries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.String(36), nullable=False),
    # topup | reservation | settlement | release | adjustment
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("amount_micros", sa.BigInteger, nullable=False),
    sa.Column("hold_micros", sa.BigInteger, nullable=False),
    sa.Column("reservation_id", sa.String(36), nullable=True),
    sa.Column("request_id", sa.String(64), nullable=True),
    sa.Column("note", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("owner", sa.String(100), nullable=True),  # 004: the replica that took a hold
)

# ---- 004_task_ownership ---------------------------------------------------------------------

# One row per replica that has run: its lease, renewed while it lives. A task or hold whose
# replica's lease has expired belongs to nobody and is ended / released by any replica's sweep.
replicas = sa.Table(
    "replicas",
    metadata,
    sa.Column("id", sa.String(100), primary_key=True),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("lease_expires_at", sa.Float, nullable=False),
)

# ---- 005_usage_timing_hourly ------------------------------------------------------------------

# Per-hour sums of usage_records by account, model and key ('' for none), kept by a trigger.
usage_hourly = sa.Table(
    "usage_hourly",
    metadata,
    sa.Column("hour", sa.Integer, primary_key=True),  # epoch seconds, a multiple of 3600
    sa.Column("account_id", sa.String(36), primary_key=True),
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("requests", sa.Integer, nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("cost_micros", sa.BigInteger, nullable=False),
    sa.Column("ttft_ms_sum", sa.Integer, nullable=False),
    sa.Column("timed", sa.Integer, nullable=False),  # rows with a measured time to first token
    sa.Column("decode_tokens", sa.Integer, nullable=False),
    sa.Column("decode_ms", sa.Integer, nullable=False),
)

# ---- 006_error_counts ---------------------------------------------------------------------------

# Refused and failed requests per minute, protocol and code.
error_counts = sa.Table(
    "error_counts",
    metadata,
    sa.Column("minute", sa.BigInteger, primary_key=True),  # epoch seconds, a multiple of 60
    sa.Column("protocol", sa.String(20), primary_key=True),
    sa.Column("code", sa.String(80), primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
)
