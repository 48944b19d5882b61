"""The embedded llama.cpp engine: an asyncio facade over an engine core in a worker process.

Construction is synchronous: it starts the worker (spawn; it loads the model and builds the
grammar tokenizer, ~2 s for SmolLM2-135M) and waits until it is ready; from a running loop call
it through `asyncio.to_thread`. `aclose()` (or `close()`) stops the worker.

- `await check(request)` validates the request in the worker (prompt tokens, context, images,
  the grammar compiled within its budget and cached there), raising `InvalidRequest` subclasses
  or `GrammarError` (parameter `constraint`, or `tools[i].schema` for a tool's schema).
- `generate(request)` returns an async generator (close it with `contextlib.aclosing`): it
  queues the request in the worker and yields ReasoningDelta… (thinking), TextDelta…, at most
  one ToolCallEvent, one Usage, one Finished. A request
  `check` would refuse raises the same error at the first `__anext__`; beyond `max_waiting`
  queued requests, `EngineOverloaded`. Closing the generator cancels the sequence.
- If the worker dies, every stream in flight raises `EngineCrashed` (503, `inferenceError`) at
  once and a new worker starts by itself. A request (its messages, tools and constraint) that was
  in flight during `restart_limit` native crashes (SIGSEGV, SIGABRT…; not SIGKILL, which comes
  from outside) is refused from then on with `RequestCrashedEngine` (400) naming `constraint` if
  it had one, else `messages`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from kimiserve.domain.types import Event, Finished, GenerationRequest
from kimiserve.engines.base import Capabilities, Health
from kimiserve.engines.llamacpp.config import LlamaCppConfig
from kimiserve.engines.llamacpp.job import Batch, Item
from kimiserve.engines.llamacpp.supervisor import Backend, InProcess, WorkerProcess, native_crash
from kimiserve.errors import EngineCrashed, RequestCrashedEngine, ServiceUnavailable

RESTART_WAIT_S = 60.0  # how long a new request waits for a restarting worker
FINGERPRINTS = 10_000  # crash counts kept (LRU)


@dataclass(eq=False)
class _Stream:
    loop: asyncio.AbstractEventLoop
    fingerprint: str
    queue: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)
    generation: int = 0  # the worker it was sent to (0: not sent yet)
    done: bool = False


def fingerprint(request: GenerationRequest) -> str:
    """What identifies a request that crashes the engine: its prompt and its constraint."""
    text = repr((request.messages, request.tools, request.constraint))
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def _deliver(batch: list[tuple[_Stream, list[Item]]]) -> None:
    for stream, items in batch:
        for item in items:
            stream.queue.put_nowait(item)


class LlamaCppEngine:
    name = "llamacpp"

    def __init__(self, config: LlamaCppConfig | None = None) -> None:
        self.config = config if config is not None else LlamaCppConfig()
        self._streams: dict[int, _Stream] = {}
        self._checks: dict[int, tuple[int, str]] = {}  # worker generation, request fingerprint
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._crashes: OrderedDict[str, int] = OrderedDict()
        self._active = 0
        self._waiting = 0
        self._closed = False
        self._last_exit: int | None = None
        self._backend: Backend
        if self.config.isolated:
            self._backend = WorkerProcess(self.config, self._on_events, self._on_down)
        else:
            self._backend = InProcess(self.config, self._on_events)
        self.capabilities = Capabilities(
            context_length=self._backend.n_ctx_seq,
            # Reasoning in a `<think>` section the engine closes itself when the level's budget is
            # spent; function calls generated under a grammar built from the tools' schemas.
            thinking="budgeted",
            tools="constrained",
            vision=False,
            max_concurrency=self.config.max_sequences,
        )

    # ---- monitoring ---------------------------------------------------------------------------

    @property
    def active_sequences(self) -> int:
        """Sequences in the worker's batch (prefilling or generating), as of its last step."""
        return self._active

    @property
    def waiting(self) -> int:
        """Requests queued in the worker for a free sequence, as of its last step."""
        return self._waiting

    @property
    def in_flight(self) -> int:
        """Streams open on this engine (queued, running, or not yet sent to the worker)."""
        return len(self._streams)

    @property
    def worker_pid(self) -> int | None:
        return getattr(self._backend, "pid", None)

    @property
    def restarts(self) -> int:
        return int(getattr(self._backend, "restarts", 0))

    async def health(self) -> Health:
        if self._closed:
            return Health(ok=False, detail="the llama.cpp engine is shut down")
        state = self._backend.state
        if not self._backend.ready:
            return Health(ok=False, detail=f"llama.cpp worker {state} (last exit code {self._last_exit})")
        return Health(
            ok=True,
            detail=f"llama.cpp worker {state}, {self._active} of {self.config.max_sequences} sequences "
            f"busy, {self._waiting} waiting, {self.restarts} restarts",
        )

    # ---- requests -----------------------------------------------------------------------------

    async def check(self, request: GenerationRequest) -> int:
        self._refuse_known_crasher(request)
        await self._wait_ready()
        # A check in flight when the worker dies counts as a crash of its request, like a stream:
        # a schema that kills the compiler is refused after `restart_limit` crashes too.
        key = next(self._ids)
        self._checks[key] = (self._backend.generation, fingerprint(request))
        try:
            prompt_tokens: int = await asyncio.wrap_future(self._backend.call("check", request))
        finally:
            self._checks.pop(key, None)
        return prompt_tokens

    async def tokenize(self, request: GenerationRequest) -> list[int]:
        """The prompt tokens a request's messages render to with the model's chat template."""
        await self._wait_ready()
        tokens: list[int] = await asyncio.wrap_future(self._backend.call("tokenize", request))
        return tokens

    def generate(self, request: GenerationRequest) -> AsyncGenerator[Event, None]:
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncGenerator[Event, None]:
        self._refuse_known_crasher(request)
        await self._wait_ready()
        job_id = next(self._ids)
        stream = _Stream(asyncio.get_running_loop(), fingerprint(request))
        self._streams[job_id] = stream
        try:
            stream.generation = self._backend.submit(job_id, request)
            while True:
                item = await stream.queue.get()
                if isinstance(item, Exception):
                    stream.done = True
                    raise item
                yield item
                if isinstance(item, Finished):
                    stream.done = True
                    return
        finally:
            self._streams.pop(job_id, None)
            if not stream.done:
                self._backend.cancel(job_id)

    async def _wait_ready(self) -> None:
        if self._closed:
            raise ServiceUnavailable("The llama.cpp engine is shut down.")
        if self._backend.ready:
            return
        if not await asyncio.to_thread(self._backend.wait_ready, RESTART_WAIT_S):
            raise EngineCrashed("The inference engine is restarting; retry the request.")

    def _refuse_known_crasher(self, request: GenerationRequest) -> None:
        crashes = self._crashes.get(fingerprint(request), 0)
        if crashes >= self.config.restart_limit:
            parameter = "constraint" if request.constraint is not None else "messages"
            raise RequestCrashedEngine(
                f"This request crashed the inference engine {crashes} times and is refused; "
                f"change the {parameter}.",
                parameter=parameter,
            )

    # ---- from the worker (supervisor or scheduler thread) -------------------------------------

    def _on_events(self, batch: Batch, active: int, waiting: int) -> None:
        if active >= 0:
            self._active, self._waiting = active, waiting
        per_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, list[Item]]]] = {}
        for job_id, items in batch:
            stream = self._streams.get(job_id)
            if stream is not None:
                per_loop.setdefault(stream.loop, []).append((stream, items))
        self._post(per_loop)

    def _on_down(self, generation: int, exit_code: int | None) -> None:
        """The worker of `generation` died (or stopped): end its streams, count the crash."""
        self._last_exit = exit_code
        self._active = self._waiting = 0
        victims = [s for s in list(self._streams.values()) if s.generation == generation and not s.done]
        if self._closed:
            error: Exception = ServiceUnavailable("The llama.cpp engine shut down during the request.")
        else:
            error = EngineCrashed("The inference engine crashed and was restarted; retry the request.")
        if native_crash(exit_code) and not self._closed:
            checks = [fp for gen, fp in list(self._checks.values()) if gen == generation]
            for culprit in {s.fingerprint for s in victims} | set(checks):
                count = self._crashes.pop(culprit, 0) + 1
                self._crashes[culprit] = count
            while len(self._crashes) > FINGERPRINTS:
                self._crashes.popitem(last=False)
        per_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, list[Item]]]] = {}
        for stream in victims:
            per_loop.setdefault(stream.loop, []).append((stream, [error]))  # type: ignore[list-item]
        self._post(per_loop)

    @staticmethod
    def _post(per_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, list[Any]]]]) -> None:
        for loop, batch in per_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
                loop.call_soon_threadsafe(_deliver, batch)

    # ---- shutdown -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._backend.close()
        error = ServiceUnavailable("The llama.cpp engine shut down during the request.")
        per_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, list[Any]]]] = {}
        for stream in list(self._streams.values()):
            if not stream.done:
                per_loop.setdefault(stream.loop, []).append((stream, [error]))
        self._post(per_loop)
