"""One request as the scheduler thread sees it, and the way its events leave the scheduler.

A `Job` is built by the engine core (prompt tokens, sampler, prefix-cache scope) and handed to
the scheduler thread; from then on only the scheduler touches its sequence state, and other
threads may only set `cancelled`. Events leave in batches: the `Outbox` collects what one
scheduler step produced and hands it to `emit` once per step (one pipe message per step when
the scheduler runs in the worker process).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kimiserve.domain.types import Event, Sampling
from kimiserve.engines.llamacpp.sampling import SamplerChain
from kimiserve.errors import KimiserveError

if TYPE_CHECKING:
    from kimiserve.engines.llamacpp.turn import Turn

Item = Event | KimiserveError
Batch = list[tuple[int, list[Item]]]
# emit(batch, active sequences, waiting requests): called once per scheduler step
Emit = Callable[[Batch, int, int], None]


@dataclass(eq=False)
class Job:
    id: int
    prompt: list[int]
    sampling: Sampling
    sampler: SamplerChain
    turn: Turn  # reasoning, text and tool call: what each token is, what the engine writes itself
    scope: str | None = None  # prefix-cache namespace (the account): reuse only within it
    cancelled: bool = False  # set from any thread; the scheduler drops the job at its next step
    done: bool = False  # set by the scheduler once the last item is on its way


class Outbox:
    """Items produced during one scheduler step (scheduler thread only)."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._pending: Batch = []
        self._counts = (0, 0)

    def put(self, job: Job, items: list[Item]) -> None:
        if items and not job.cancelled:
            self._pending.append((job.id, items))

    def flush(self, active: int, waiting: int) -> None:
        """Hand the step's items on; also when only the counts changed (for the metrics)."""
        if not self._pending and self._counts == (active, waiting):
            return
        pending, self._pending = self._pending, []
        self._counts = (active, waiting)
        self._emit(pending, active, waiting)
