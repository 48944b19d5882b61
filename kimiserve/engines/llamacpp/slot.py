"""One llama.cpp sequence (id and KV stream) and the request it is serving (scheduler thread only)."""

from __future__ import annotations

import ctypes
from concurrent.futures import Future

import numpy as np
import numpy.typing as npt

from kimiserve.engines.llamacpp.job import Job


class Slot:
    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.job: Job | None = None
        self.cached: list[int] = []  # prompt tokens whose KV is kept in this stream
        self.cached_scope: str | None = None  # the cache_scope those tokens came from
        self.prompt: list[int] = []
        self.n_past = 0  # tokens of this sequence in the KV cache
        self.cacheable = 0  # leading prompt tokens evaluated by prefill (kept after the end)
        self.reused = 0  # prompt tokens taken from the prefix cache
        self.generating = False
        self.generated = 0
        self.last_token = -1
        self.mask: Future[None] | None = None  # the grammar mask being computed for the next token
        self.parked: npt.NDArray[np.float32] | None = None  # logits waiting for that mask

    def clear(self) -> None:
        """Back to idle; `cached` (the prefix cache) is kept unless `forget()` is called."""
        if self.job is not None:
            self.cached = self.job.prompt[: self.cacheable]
            self.cached_scope = self.job.scope
        self.job = None
        self.prompt = []
        self.n_past = self.cacheable = self.reused = self.generated = 0
        self.generating = False
        self.last_token = -1
        self.mask = None
        self.parked = None

    def forget(self) -> None:
        self.cacheable = 0
        self.cached = []

    def assign(self, job: Job, keep: int) -> None:
        """Serve `job`, with the first `keep` prompt tokens already in the KV cache."""
        self.job = job
        self.prompt = job.prompt
        self.cached = self.cached[:keep]
        self.n_past = keep
        self.cacheable = keep
        self.reused = keep
        self.generating = False
        self.generated = 0

    def common_prefix(self, prompt: list[int], scope: str | None) -> int:
        """Prompt tokens this slot's cache can give a request of `scope` (0 for another scope)."""
        if scope != self.cached_scope:
            return 0
        n = 0
        for a, b in zip(self.cached, prompt, strict=False):
            if a != b:
                break
            n += 1
        return n

    @property
    def waiting_for_mask(self) -> bool:
        return self.parked is not None

    def next_chunk(self, budget: int) -> int:
        """Prompt tokens to evaluate now: never one alone past position 0, nor one left over."""
        remaining = len(self.prompt) - self.n_past
        if budget <= 0 or remaining <= 0:
            return 0
        if remaining <= budget:
            return remaining if remaining >= 2 or self.n_past == 0 else 0
        take = budget - 1 if remaining - budget == 1 else budget
        return take if take >= 2 else 0

    def sampler_sample(self, ctx: ctypes.c_void_p, index: int) -> int:
        assert self.job is not None
        return self.job.sampler.sample(ctx, index)
