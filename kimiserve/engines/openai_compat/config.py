"""One upstream's settings, as the models file gives them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# How the upstream takes Kimi's thinking switch (and the few other things dialects differ in):
# "vllm" / "sglang": `chat_template_kwargs: {"thinking": bool}`; "moonshot": `thinking: {"type": …}`;
# "openai": a plain OpenAI-compatible server (llama-server, another kimiserve): no thinking switch.
Dialect = Literal["openai", "vllm", "sglang", "moonshot"]
DIALECTS: tuple[Dialect, ...] = ("openai", "vllm", "sglang", "moonshot")


@dataclass(frozen=True)
class UpstreamConfig:
    url: str  # base URL up to and including the API version, e.g. http://10.0.0.5:8000/v1
    model: str  # the model name the upstream serves
    key_env: str | None = None  # environment variable holding the API key (never the key itself)
    dialect: Dialect = "openai"
    weight: float = 1.0
    max_concurrency: int = 64
    context_length: int = 262_144
    vision: bool = False
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 120.0  # longest silence between two chunks of a stream

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")

    @property
    def label(self) -> str:
        """How logs and errors name the upstream: its URL, never its key."""
        return self.base_url
