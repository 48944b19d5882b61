"""Continuous batching on one dedicated thread: every llama.cpp context call happens here.

Each sequence owns one slot, i.e. one llama.cpp sequence id with its own KV stream. A step:

1. admit waiting jobs into free slots and drop cancelled ones (their KV is cut at once);
2. one `llama_decode` with the last sampled token of every generating sequence (sorted by
   sequence id: llama.cpp splits a multi-stream batch into one micro-batch per run of
   consecutive ids), then one sample per sequence from its own sampler chain;
3. prompt chunks, up to `prompt_chunk` tokens in all, one `llama_decode` per sequence.

Grammar masks never hold up the batch: the mask a constrained sequence needs for its next token
is computed on a thread pool (llguidance releases the GIL) while `llama_decode` runs. If it is
not ready when the logits are, the sequence parks a copy of its logits row and sits out the
following steps until its mask arrives; everyone else keeps decoding.

Prompt chunks never mix with decode tokens and are never a single token past position 0:
llama.cpp computes a one-token attention with other kernels than a many-token one, so this keeps
a sequence's numbers independent of what else runs (see README.md, "Determinism").

Prefix cache: when a sequence ends, the KV of its prompt stays in its stream; a new request is
placed in the free slot sharing the longest prompt prefix *of the same cache scope* (the account:
another account's prefix is never reused, so `cached_tokens` and timing reveal nothing across
accounts) and only its remainder is evaluated.
Generated tokens are cut right away (their KV came from one-token steps, see above).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import llama_cpp as llama
import numpy as np
import numpy.typing as npt

from kimiserve.domain.types import Finished, FinishReason, Usage
from kimiserve.engines.llamacpp.config import LlamaCppConfig
from kimiserve.engines.llamacpp.job import Emit, Item, Job, Outbox
from kimiserve.engines.llamacpp.model import NativeModel
from kimiserve.engines.llamacpp.slot import Slot
from kimiserve.errors import EngineError, EngineOverloaded, KimiserveError, ServiceUnavailable

log = logging.getLogger(__name__)

MIN_REUSE = 4  # shortest cached prefix worth giving up the lowest free sequence id for


class Scheduler:
    def __init__(self, model: NativeModel, config: LlamaCppConfig, emit: Emit) -> None:
        self._model = model
        self._ctx = model.ctx
        self._prompt_chunk = config.prompt_chunk
        self._max_waiting = config.max_waiting
        self._slots = [Slot(seq) for seq in range(config.max_sequences)]
        self._order: list[Slot] = []  # slots with a job, in admission order
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._failure: str | None = None
        self._batch = llama.llama_batch_init(config.n_batch, 0, 1)
        self._outbox = Outbox(emit)
        self._jobs: dict[int, Job] = {}
        self._eog = np.array(sorted(model.eog_tokens), dtype=np.int64)
        # Called on the scheduler thread after an unexpected failure has been reported to every
        # job; the worker process exits there, so the supervisor restarts it.
        self.on_failure: Callable[[], None] | None = None
        self._masks = ThreadPoolExecutor(max_workers=config.mask_threads, thread_name_prefix="grammar-mask")
        self._thread = threading.Thread(target=self._run, name="llamacpp-scheduler", daemon=True)

    # ---- called from other threads -----------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    @property
    def active(self) -> int:
        return len(self._order)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def failure(self) -> str | None:
        return self._failure

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping or not self._thread.is_alive():
                raise ServiceUnavailable("The llama.cpp engine is shut down.")
            if len(self._waiting) >= self._max_waiting:
                raise EngineOverloaded(
                    f"The llama.cpp engine has {self._max_waiting} requests waiting already; retry later."
                )
            self._waiting.append(job)
            self._jobs[job.id] = job
            self._cond.notify()

    def cancel(self, job_id: int) -> bool:
        """Drop a job at the next step; False if the scheduler does not know it (yet, or any more)."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is not None:
                job.cancelled = True
                self._cond.notify()
            return job is not None

    def _wake(self, _future: object = None) -> None:
        with self._cond:
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()
        self._masks.shutdown(wait=True, cancel_futures=True)
        if self._batch is not None:
            llama.llama_batch_free(self._batch)
            self._batch = None

    # ---- the scheduler thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._stopping and not self._waiting and not self._runnable():
                        self._cond.wait()
                    if self._stopping:
                        break
                    self._admit()
                self._reap()
                self._unpark()
                self._step()
                self._flush()
        except Exception as exc:  # a bug or a native failure: fail every request, stay down
            log.exception("llama.cpp scheduler failed")
            self._failure = f"scheduler failed: {exc!r}"
        finally:
            with self._cond:
                self._stopping = True
                waiting, self._waiting = list(self._waiting), deque()
            closed = ServiceUnavailable("The llama.cpp engine shut down during the request.")
            for slot in list(self._order):
                self._release(slot, error=closed)
            for job in waiting:
                self._outbox.put(job, [closed])
                job.sampler.free()
            self._flush()
        if self._failure is not None and self.on_failure is not None:
            self.on_failure()

    def _flush(self) -> None:
        with self._cond:
            for job_id in [i for i, job in self._jobs.items() if job.done]:
                del self._jobs[job_id]
            waiting = len(self._waiting)
        self._outbox.flush(len(self._order), waiting)

    def _runnable(self) -> bool:
        """A slot can make progress now (not only parked ones waiting for their masks)."""
        return any(
            s.job is not None and (s.job.cancelled or not s.waiting_for_mask or _ready(s.mask))
            for s in self._order
        )

    def _admit(self) -> None:
        while self._waiting:
            job = self._waiting[0]
            if job.cancelled:
                self._waiting.popleft()
                job.sampler.free()
                job.done = True
                continue
            slot = self._pick(job)
            if slot is None:
                return
            self._waiting.popleft()
            slot.assign(job, self._memory_keep(slot, job))
            self._order.append(slot)
            self._start_mask(slot)  # computed while the prompt is evaluated

    def _pick(self, job: Job) -> Slot | None:
        free = [s for s in self._slots if s.job is None]
        if not free:
            return None
        best = max(free, key=lambda s: (s.common_prefix(job.prompt, job.scope), -s.seq))
        return best if best.common_prefix(job.prompt, job.scope) >= MIN_REUSE else free[0]

    def _memory_keep(self, slot: Slot, job: Job) -> int:
        """Cut the slot's KV to the reusable prompt prefix; return how many tokens remain."""
        prompt = job.prompt
        keep = slot.common_prefix(prompt, job.scope)
        if 0 < len(prompt) - keep < 2 or keep == len(prompt):
            keep = max(0, len(prompt) - 2)  # evaluate at least two tokens (see module doc)
        llama.llama_memory_seq_rm(self._model.memory, slot.seq, keep, -1)
        return keep

    def _reap(self) -> None:
        for slot in [s for s in self._order if s.job is not None and s.job.cancelled]:
            self._release(slot)

    def _release(self, slot: Slot, *, error: KimiserveError | None = None) -> None:
        job = slot.job
        if job is None:
            return
        if error is not None:
            self._outbox.put(job, [error])
            slot.forget()
            llama.llama_memory_seq_rm(self._model.memory, slot.seq, -1, -1)
        else:
            llama.llama_memory_seq_rm(self._model.memory, slot.seq, slot.cacheable, -1)
        job.done = True
        job.sampler.free()
        slot.clear()
        self._order.remove(slot)

    def _finish(self, slot: Slot, reason: FinishReason, items: list[Item]) -> None:
        job = slot.job
        assert job is not None
        tail, reason = job.turn.finish(reason)
        items.extend(tail)
        items.append(
            Usage(
                len(job.prompt),
                slot.generated,
                cached_tokens=slot.reused,
                reasoning_tokens=job.turn.reasoning_tokens,
            )
        )
        items.append(Finished(reason))
        self._outbox.put(job, items)
        self._release(slot)

    def _start_mask(self, slot: Slot) -> None:
        assert slot.job is not None
        sampler = slot.job.sampler
        if sampler.needs_mask:
            slot.mask = self._masks.submit(sampler.compute_mask)
            slot.mask.add_done_callback(self._wake)
        else:
            slot.mask = None

    def _sample(self, slot: Slot, index: int) -> None:
        """Sample the token for output `index` of the last decode, or park the logits row if the
        sequence's grammar mask is not ready yet (see the module doc)."""
        job = slot.job
        assert job is not None
        sampler = job.sampler
        if job.turn.forced:  # a token the engine writes itself (closing a reasoning section...)
            token = job.turn.forced.popleft()
            sampler.accept_forced(token)
            self._accept(slot, token)
        elif not sampler.constrained:
            choices = job.turn.choices
            if job.turn.answer_pending or choices:
                row = np.ctypeslib.as_array(
                    llama.llama_get_logits_ith(self._ctx, index), shape=(self._model.n_vocab,)
                )
                if choices:  # between two tool calls: end the turn or open the next call
                    kept = row[list(choices)].copy()
                    row[:] = -np.inf
                    row[list(choices)] = kept
                else:  # after a reasoning section: the answer may not be empty
                    row[self._eog] = -np.inf
            self._accept(slot, slot.sampler_sample(self._ctx, index))
        else:
            row = np.ctypeslib.as_array(
                llama.llama_get_logits_ith(self._ctx, index), shape=(self._model.n_vocab,)
            )
            if slot.mask is not None and not slot.mask.done():
                slot.parked = row.copy()
                return
            self._sample_constrained(slot, row)
            return
        if slot.job is job and sampler.needs_mask:  # the grammar starts with the next token
            self._start_mask(slot)

    def _sample_constrained(self, slot: Slot, row: npt.NDArray[np.float32]) -> None:
        job = slot.job
        assert job is not None
        try:
            if slot.mask is not None:
                slot.mask.result()
            max_tokens = job.sampling.max_tokens
            remaining = None if max_tokens is None else max_tokens - slot.generated
            token = job.sampler.sample_logits(row, remaining)
        except EngineError as exc:
            self._release(slot, error=exc)
            return
        self._accept(slot, token)
        if slot.job is job:  # still generating: the mask for the next token, beside the decode
            self._start_mask(slot)

    def _unpark(self) -> None:
        for slot in [s for s in self._order if s.parked is not None and _ready(s.mask)]:
            row, slot.parked = slot.parked, None
            assert row is not None
            self._sample_constrained(slot, row)

    def _step(self) -> None:
        generating = sorted(
            (s for s in self._order if s.generating and s.parked is None), key=lambda s: s.seq
        )
        if generating:
            self._decode_step(generating)
        budget = self._prompt_chunk
        for slot in [s for s in self._order if not s.generating]:
            take = slot.next_chunk(budget)
            if take == 0:
                break
            self._prefill(slot, take)
            budget -= take

    def _decode_step(self, slots: list[Slot]) -> None:
        batch = self._batch
        for i, slot in enumerate(slots):
            batch.token[i] = slot.last_token
            batch.pos[i] = slot.n_past
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = slot.seq
            batch.logits[i] = 1
        batch.n_tokens = len(slots)
        if not self._decode(slots):
            return
        for i, slot in enumerate(slots):
            slot.n_past += 1
            self._sample(slot, i)

    def _prefill(self, slot: Slot, take: int) -> None:
        batch = self._batch
        start = slot.n_past
        last = start + take == len(slot.prompt)
        prompt = slot.prompt
        seq = slot.seq
        for i in range(take):
            batch.token[i] = prompt[start + i]
            batch.pos[i] = start + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = 0
        batch.logits[take - 1] = 1 if last else 0
        batch.n_tokens = take
        if not self._decode([slot]):
            return
        slot.n_past += take
        slot.cacheable = slot.n_past
        if last:
            slot.generating = True
            self._sample(slot, take - 1)

    def _decode(self, slots: list[Slot]) -> bool:
        rc = llama.llama_decode(self._ctx, self._batch)
        if rc == 0:
            return True
        log.error("llama_decode failed with %d for %d sequences", rc, len(slots))
        for slot in slots:
            self._release(slot, error=EngineError(f"llama.cpp failed to decode (status {rc})."))
        return False

    def _context_full(self, slot: Slot) -> bool:
        """Prompt plus completion fill the sequence's context (the last token is never decoded)."""
        return slot.n_past + 1 >= self._model.n_ctx_seq

    def _accept(self, slot: Slot, token: int) -> None:
        job = slot.job
        assert job is not None
        slot.generated += 1
        turn = job.turn
        if token in self._model.eog_tokens:  # never sampled under ignore_eos without a grammar
            if not turn.on_eog():
                self._finish(slot, "stop", [])
                return
            token = turn.forced.popleft()  # the end of a reasoning section: closed, answer follows
            job.sampler.accept_forced(token)
        items = turn.feed(token)
        max_tokens = job.sampling.max_tokens
        if turn.stopped:
            self._finish(slot, "stop", items)
        elif turn.call_done:
            self._finish(slot, "tool_calls", items)
        elif (
            (max_tokens is not None and slot.generated >= max_tokens)
            or self._context_full(slot)
            or job.sampler.closed
        ):
            self._finish(slot, "length", items)
        else:
            slot.last_token = token
            self._outbox.put(job, items)


def _ready(future: Future[None] | None) -> bool:
    return future is None or future.done()
