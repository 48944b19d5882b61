"""PoolEngine: several replicas of one model behind one engine.

- Affinity: requests sharing a `prompt_cache_key` (or, without one, the same leading messages)
  go to the same healthy replica by weighted rendezvous hashing, so vLLM's and SGLang's prefix
  caches hit. The key includes the cache scope (the account), which vLLM's `cache_salt` also
  separates.
- Bounded load: the preferred replica is passed over when it is at its concurrency cap or has
  `spill` more requests outstanding than the least-loaded one; then least-outstanding wins.
- Failover: a replica fault (refused connection, 5xx, 429, timeout) ejects the replica for a
  cool-down that doubles on repeated faults; a request that failed before its first event is
  retried on another replica. After the cool-down the replica is tried again; a light probe
  (`GET /models`) re-admits it as soon as it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from kimiserve.domain.types import Event, GenerationRequest
from kimiserve.engines.base import Capabilities, Health
from kimiserve.engines.openai_compat.engine import UpstreamEngine
from kimiserve.engines.openai_compat.errors import UpstreamUnavailable, is_replica_fault

log = logging.getLogger(__name__)

AFFINITY_MESSAGES = 2  # without a prompt_cache_key, the first messages (system + first user) decide


@dataclass
class Replica:
    engine: UpstreamEngine
    weight: float
    cap: int
    outstanding: int = 0
    faults: int = 0  # consecutive
    ejected_until: float = 0.0
    served: int = 0

    @property
    def label(self) -> str:
        return self.engine.config.label

    def available(self, now: float) -> bool:
        return self.ejected_until <= now and self.outstanding < self.cap


def affinity_key(request: GenerationRequest) -> str | None:
    scope = request.cache_scope or ""
    if request.prompt_cache_key:
        return f"{scope}\0key\0{request.prompt_cache_key}"
    if not request.messages:
        return None
    lead = "\0".join(f"{m.role}:{m.content}" for m in request.messages[:AFFINITY_MESSAGES])
    return f"{scope}\0msg\0{lead}"


def rendezvous_score(key: str, replica: Replica) -> float:
    digest = hashlib.blake2b(f"{key}\0{replica.label}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)  # in (0, 1)
    return -replica.weight / math.log(unit)


class PoolEngine:
    def __init__(
        self,
        name: str,
        replicas: list[UpstreamEngine],
        *,
        cooldown_s: float = 5.0,
        max_cooldown_s: float = 60.0,
        probe_interval_s: float = 2.0,
        spill: int = 16,
    ) -> None:
        if not replicas:
            raise ValueError("a pool needs at least one replica")
        self.name = name
        self.replicas = [Replica(e, e.config.weight, e.config.max_concurrency) for e in replicas]
        self.capabilities = Capabilities(
            context_length=min(e.capabilities.context_length for e in replicas),
            thinking=replicas[0].capabilities.thinking,
            tools="native",
            vision=all(e.capabilities.vision for e in replicas),
            max_concurrency=sum(r.cap for r in self.replicas),
        )
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self.probe_interval_s = probe_interval_s
        self.spill = spill
        self._prober: asyncio.Task[None] | None = None

    @property
    def repairs(self) -> Counter[str]:
        """The repairs made to every replica's answers, by kind (repairs.py)."""
        return sum((r.engine.repairs for r in self.replicas), Counter())

    async def check(self, request: GenerationRequest) -> int | None:
        return await self.replicas[0].engine.check(request)

    def pick(self, request: GenerationRequest, exclude: set[int]) -> Replica | None:
        now = time.monotonic()
        candidates = [r for i, r in enumerate(self.replicas) if i not in exclude and r.available(now)]
        if not candidates:
            return None
        least = min(candidates, key=lambda r: r.outstanding / r.weight)
        key = affinity_key(request)
        if key is None:
            return least
        preferred = max(candidates, key=lambda r: rendezvous_score(key, r))
        if preferred.outstanding - least.outstanding > self.spill:
            return least
        return preferred

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Event, None]:
        self._start_prober()
        tried: set[int] = set()
        last: Exception | None = None
        while True:
            replica = self.pick(request, tried)
            if replica is None:
                if last is not None:
                    raise last
                raise UpstreamUnavailable(
                    f"No replica of {self.name} can take the request now "
                    f"({len(tried)} tried, the rest busy or ejected)."
                )
            tried.add(self.replicas.index(replica))
            delivered = False
            replica.outstanding += 1
            try:
                async with contextlib.aclosing(replica.engine.generate(request)) as events:
                    async for event in events:
                        delivered = True
                        yield event
                replica.faults = 0
                replica.served += 1
                return
            except Exception as exc:
                if not is_replica_fault(exc):
                    raise
                self._eject(replica, exc)
                if delivered:
                    raise
                last = exc
                log.warning("retrying on another replica of %s after: %s", self.name, exc)
            finally:
                replica.outstanding -= 1

    def _eject(self, replica: Replica, exc: BaseException) -> None:
        replica.faults += 1
        cooldown = min(self.cooldown_s * 2 ** (replica.faults - 1), self.max_cooldown_s)
        replica.ejected_until = time.monotonic() + cooldown
        log.warning("replica %s of %s ejected for %.1fs: %s", replica.label, self.name, cooldown, exc)

    def _start_prober(self) -> None:
        if self._prober is None or self._prober.done():
            self._prober = asyncio.get_running_loop().create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        """Re-admit an ejected replica as soon as it answers `GET /models`."""
        while True:
            await asyncio.sleep(self.probe_interval_s)
            now = time.monotonic()
            for replica in self.replicas:
                if replica.ejected_until > now and (await replica.engine.health()).ok:
                    log.info("replica %s of %s re-admitted", replica.label, self.name)
                    replica.ejected_until = 0.0

    async def health(self) -> Health:
        now = time.monotonic()
        up = [r for r in self.replicas if r.ejected_until <= now]
        detail = f"{len(up)}/{len(self.replicas)} replicas admitted"
        return Health(ok=bool(up), detail=detail)

    async def aclose(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        for replica in self.replicas:
            await replica.engine.aclose()
