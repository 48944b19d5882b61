"""One Settings object: built in `create_app` / the CLI, never read from the environment elsewhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting can also be given as an environment variable `KIMISERVE_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="KIMISERVE_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, description="Port for HTTP, SSE and WebSocket (the Runware SDK's local URL).")
    data_dir: Path = Field(
        Path("./kimiserve-data"), description="Where the SQLite database and uploads live."
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite+aiosqlite in data_dir."
    )
    open_mode: bool = Field(
        False, description="Serve without authentication (development only; says so loudly)."
    )
    key_cache_s: float = Field(
        1.0,
        ge=0,
        description="Seconds an API key's row is kept in memory after it was read (0: none). "
        "Changes through this server's admin API or dashboard apply at once; with Redis, those "
        "through another replica or the CLI too; without it, within this time.",
    )
    engine: Literal["llamacpp", "fake"] = Field(
        "llamacpp", description="Embedded engine: llamacpp (real) or fake (scripted, tests only)."
    )
    model_path: str | None = Field(
        None, description="GGUF file for the embedded engine; default the bundled SmolLM2-135M."
    )
    n_ctx: int = Field(
        65536,
        description="Embedded engine KV cache in tokens, across all sequences: each of the "
        "max_sequences gets n_ctx / max_sequences (4096 by default; ~23 KB per token for SmolLM2).",
    )
    n_threads: int | None = Field(None, description="Embedded engine threads; default all cores.")
    max_sequences: int = Field(16, description="Embedded engine: sequences decoded together.")
    max_waiting: int = Field(
        256,
        description="Generations admitted per engine beyond those it decodes at once; more are refused "
        "up front with 503 serviceUnavailable (never acknowledged and then failed).",
    )
    deterministic: bool = Field(
        True,
        description="Embedded engine: the same seed and parameters give the same text whatever runs "
        "beside it (one KV stream per sequence, plain weight layouts). False uses a unified KV cache "
        "and repacked weights on CPUs without AMX, which may be faster elsewhere but measured "
        "slower on the 2-core Xeon (see the engine README and bench/RESULTS.md).",
    )
    engine_isolated: bool = Field(
        True,
        description="Embedded engine: run llama.cpp in a supervised worker process, so a native "
        "crash fails the requests in flight and restarts the worker instead of killing the server.",
    )
    models_file: Path | None = Field(
        None,
        description="TOML file of served models backed by upstream engines (vLLM, SGLang, hosted APIs); "
        "see docs/deploy-kimi-k2.6.md. Without it the embedded model serves every model name.",
    )
    price_input_per_million: float = Field(0.48, description="USD per 1M input tokens (Kimi K2.6).")
    price_output_per_million: float = Field(2.00, description="USD per 1M output tokens (Kimi K2.6).")
    price_cached_per_million: float = Field(0.08, description="USD per 1M cached input tokens.")
    get_response_wait_s: float = Field(25.0, description="How long getResponse holds its reply open.")
    keepalive_s: float = Field(10.0, description="Seconds between SSE keep-alive comments.")
    stream_write_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A stream (SSE) or WebSocket whose client reads nothing for this long, once the "
        "socket's buffers are full, is cut: a stream as if its client had left (its generations "
        "charged for what they produced, their permits freed); a WebSocket is closed (its "
        "replies kept for a resume and getResponse).",
    )
    max_body_bytes: int = Field(16 * 1024 * 1024, description="Largest accepted request body.")
    rate_limit_window_s: int = Field(
        60, description="Window of the per-minute rate limits (rpm, tpm), in seconds; 60 = per minute."
    )
    log_level: str = Field("info", description="Log level.")
    public_url: str | None = Field(
        None, description="Base URL clients reach this server at (for imageURL); default from the request."
    )
    allow_private_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names, IPs or CIDR networks that URL fetches and webhooks may reach even though "
        "they are private (comma-separated), e.g. a local webhook receiver during development.",
    )
    fetch_timeout_s: float = Field(20.0, description="Total time limit of one URL fetch (inputs, uploads).")
    fetch_max_bytes: int = Field(16 * 1024 * 1024, description="Largest body a URL fetch may return.")
    webhook_timeout_s: float = Field(10.0, description="Total time limit of one webhook delivery attempt.")
    webhook_backoff_base_s: float = Field(
        5.0, description="First webhook retry delay; doubles per attempt (with jitter)."
    )
    webhook_backoff_max_s: float = Field(3600.0, description="Longest delay between webhook retries.")
    webhook_retry_window_s: float = Field(
        2 * 86400.0, description="How long a webhook delivery is retried before it is given up."
    )
    webhook_concurrency: int = Field(8, description="Webhook deliveries attempted at the same time.")
    ws_idle_timeout_s: float = Field(120.0, description="A WebSocket silent this long is closed.")
    ws_session_ttl_s: float = Field(
        120.0, description="How long a WebSocket session's results are kept for a resume after it closes."
    )
    ws_max_in_flight: int = Field(64, description="Tasks one WebSocket connection may have running at once.")
    ws_send_queue: int = Field(256, description="Messages queued for one WebSocket before it is stuck.")
    ws_key_recheck_s: float = Field(
        30.0, description="How often an open WebSocket checks its API key again (a revoked key ends it)."
    )
    search_url: str | None = Field(
        None,
        description="Base URL of a SearXNG instance for the built-in search tool (its JSON API, "
        "`/search?format=json`); unset: the local index of documents added with `kimiserve search add`.",
    )
    search_results: int = Field(5, description="Search hits the built-in search tool passes to the model.")
    code_timeout_s: float = Field(15.0, description="Built-in codeInterpreter: wall-clock limit of one run.")
    code_cpu_s: int = Field(10, description="Built-in codeInterpreter: CPU seconds of one run.")
    code_memory_mb: int = Field(512, description="Built-in codeInterpreter: address space of one run, MiB.")
    code_max_processes: int = Field(32, description="Built-in codeInterpreter: processes one run may have.")
    code_tmpfs_mb: int = Field(64, description="Built-in codeInterpreter: size of the writable /tmp, MiB.")
    code_max_output_bytes: int = Field(
        64 * 1024, description="Built-in codeInterpreter: stdout and stderr kept per run (each); more is cut."
    )
    tool_max_rounds: int = Field(
        8,
        ge=1,
        le=64,
        description="Built-in tools' loop: generation rounds one request may take (the last one "
        "without the built-in tools, so the model answers).",
    )
    shutdown_grace_s: float = Field(
        10.0,
        description="On SIGTERM, how long running requests, streams and WebSocket tasks may take to "
        "finish before they are ended with their protocol's terminal error frame.",
    )
    # ---- several replicas (issue 13) ----
    replica_id: str | None = Field(
        None,
        description="This replica's name in the task-ownership table: unique per running process, "
        "stable across its restarts (a restart ends its previous run's tasks at once). Default host:port.",
    )
    task_lease_s: float = Field(
        30.0,
        description="How long a replica's tasks stay its own without a renewal (renewed every third "
        "of it): a replica that dies has its tasks ended `taskInterrupted` by another after this.",
    )
    redis_url: str | None = Field(
        None,
        description="Redis shared by the replicas (rate limits, cross-replica wake-ups, WebSocket "
        "session buffers); unset: in-process versions (one replica).",
    )
    model_map: dict[str, str] = Field(
        default_factory=lambda: {"claude-*": "kimi-k2.6"},
        description="Anthropic Messages API: model names that are not served, as shell-style globs, "
        'mapped to a served model name (JSON, e.g. {"claude-*": "kimi-k2.6"}), so agents that '
        "send their own default names (Claude Code) work without flags. Served names always win; "
        "the first matching glob is used; {} turns it off.",
    )
    fake_delay_s: float = Field(
        0.0, description="The fake engine (tests only): seconds before each word, to make tasks last."
    )

    error_log_flush_s: float = Field(
        5.0, gt=0, description="How often refused/failed request counts are added to the database."
    )

    @field_validator("allow_private_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    def resolved_replica_id(self) -> str:
        if self.replica_id:
            return self.replica_id
        import socket

        return f"{socket.gethostname()}:{self.port}"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'kimiserve.db'}"
