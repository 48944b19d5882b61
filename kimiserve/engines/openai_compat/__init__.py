"""Engines that forward to an OpenAI-compatible `/v1/chat/completions`: vLLM, SGLang,
llama.cpp's llama-server, another kimiserve, hosted providers (Moonshot, resellers).

- `config`   one upstream's settings (URL, key variable, dialect, limits)
- `wire`     GenerationRequest → request body, the Kimi dialect and tool-call id normalisation
- `stream`   SSE chunks → events (reasoning under either name, tool-call deltas, usage)
- `budget`   a thinking level's reasoning budget enforced over the wire (vLLM, SGLang)
- `tools`    tool-call argument validation against the declared schema
- `errors`   aiohttp failures and upstream error bodies → the kimiserve exception tree
- `engine`   UpstreamEngine: one upstream, one pooled aiohttp session
- `pool`     PoolEngine: replicas with failover, ejection and prompt-cache affinity
"""

from kimiserve.engines.openai_compat.config import Dialect, UpstreamConfig
from kimiserve.engines.openai_compat.engine import UpstreamEngine
from kimiserve.engines.openai_compat.pool import PoolEngine

__all__ = ["Dialect", "PoolEngine", "UpstreamConfig", "UpstreamEngine"]
