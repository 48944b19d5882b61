"""One Settings object: built in `create_app` / the CLI, never read from the environment elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    engine: Literal["llamacpp", "fake"] = Field(
        "llamacpp", description="Embedded engine: llamacpp (real) or fake (scripted, tests only)."
    )
    model_path: str | None = Field(
        None, description="GGUF file for the embedded engine; default the bundled SmolLM2-135M."
    )
    n_ctx: int = Field(8192, description="Embedded engine KV-cache size in tokens.")
    n_threads: int | None = Field(None, description="Embedded engine threads; default all cores.")
    max_sequences: int = Field(16, description="Embedded engine: sequences decoded together.")
    price_input_per_million: float = Field(0.48, description="USD per 1M input tokens (Kimi K2.6).")
    price_output_per_million: float = Field(2.00, description="USD per 1M output tokens (Kimi K2.6).")
    price_cached_per_million: float = Field(0.08, description="USD per 1M cached input tokens.")
    get_response_wait_s: float = Field(20.0, description="How long getResponse holds its reply open.")
    keepalive_s: float = Field(10.0, description="Seconds between SSE keep-alive comments.")
    max_body_bytes: int = Field(16 * 1024 * 1024, description="Largest accepted request body.")
    log_level: str = Field("info", description="Log level.")

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'kimiserve.db'}"
