"""One request as the scheduler thread sees it, and the way its events get back to asyncio.

A `Job` is created on the event loop, handed to the scheduler thread, and from then on only
the scheduler touches its sequence state. The consumer side may only set `cancelled`. Events
travel back in batches, one `call_soon_threadsafe` per event loop per scheduler step.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from kimiserve.domain.types import Event, Sampling
from kimiserve.engines.llamacpp.sampling import SamplerChain
from kimiserve.errors import KimiserveError

Item = Event | KimiserveError


@dataclass(eq=False)
class Job:
    prompt: list[int]
    sampling: Sampling
    sampler: SamplerChain
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # set by the consumer; the scheduler drops the job at its next step
    done: bool = False  # set by the scheduler once the last item is on its way


def _deliver(batch: list[tuple[Job, list[Item]]]) -> None:
    for job, items in batch:
        for item in items:
            job.queue.put_nowait(item)


class Outbox:
    """Items produced during one scheduler step, grouped per event loop (scheduler thread only)."""

    def __init__(self) -> None:
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[Job, list[Item]]]] = {}

    def put(self, job: Job, items: list[Item]) -> None:
        if items and not job.cancelled:
            self._pending.setdefault(job.loop, []).append((job, items))

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for loop, batch in pending.items():
            try:
                loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                for job, _ in batch:
                    job.cancelled = True
