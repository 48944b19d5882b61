"""Where the engine core runs: a supervised worker process (default), or this process.

`WorkerProcess` starts `python -m kimiserve.engines.llamacpp.worker` (a fresh interpreter, so
nothing of the server's state or `__main__` is inherited) with one end of a socket pair as a
`multiprocessing.connection.Connection` (pickled messages), reads the worker's messages on one
thread, and supervises it: when the pipe closes without a
`stop` (the worker died: SIGSEGV from native code, SIGKILL from the OOM killer or an operator)
it fails every pending call with `EngineCrashed`, tells the engine (`on_down`, which fails the
streams in flight) and starts a new worker, all on that thread. `generation` counts the workers
started, so a stream knows which worker it belongs to.

`InProcess` runs the same core in this process (no isolation): the anchor for measuring what the
process boundary costs (`bench/engine.py`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any, Protocol

from kimiserve.domain.types import GenerationRequest
from kimiserve.engines.llamacpp.config import LlamaCppConfig
from kimiserve.engines.llamacpp.core import Core
from kimiserve.engines.llamacpp.job import Emit
from kimiserve.errors import EngineCrashed, KimiserveError, ModelLoadError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
# Exits that say the worker itself failed (native crash), as opposed to being killed or stopped.
EXTERNAL_SIGNALS = frozenset({-signal.SIGKILL, -signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP})


# OnDown(generation, exit code): the worker of that generation is gone (already restarting)
OnDown = Callable[[int, int | None], None]


class Backend(Protocol):
    generation: int
    n_ctx_seq: int

    @property
    def state(self) -> str: ...

    @property
    def ready(self) -> bool: ...

    def wait_ready(self, timeout: float) -> bool: ...

    def call(self, kind: str, request: GenerationRequest) -> Future[Any]: ...

    def submit(self, job_id: int, request: GenerationRequest) -> int: ...

    def cancel(self, job_id: int) -> None: ...

    def close(self) -> None: ...


class InProcess:
    """The core in this process, its calls on a small thread pool."""

    generation = 1

    def __init__(self, config: LlamaCppConfig, emit: Emit) -> None:
        self._core = Core(config, emit)
        self.n_ctx_seq = self._core.n_ctx_seq
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="engine-calls")

    @property
    def state(self) -> str:
        return "in-process"

    @property
    def ready(self) -> bool:
        return self._core.scheduler.alive

    def wait_ready(self, timeout: float) -> bool:
        return self.ready

    def call(self, kind: str, request: GenerationRequest) -> Future[Any]:
        if kind == "check":
            return self._pool.submit(lambda: len(self._core.check(request)))
        return self._pool.submit(self._core.tokenize, request)

    def submit(self, job_id: int, request: GenerationRequest) -> int:
        self._pool.submit(self._core.submit, job_id, request)
        return self.generation

    def cancel(self, job_id: int) -> None:
        self._core.cancel(job_id)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._core.close()


class WorkerProcess:
    def __init__(self, config: LlamaCppConfig, emit: Emit, on_down: OnDown) -> None:
        self._config = config
        self._emit = emit
        self._on_down = on_down
        self._lock = threading.Lock()  # guards the connection, its generation and the calls
        self._conn: Connection | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._calls: dict[int, Future[Any]] = {}
        self._ids = itertools.count(1)
        self._ready = threading.Event()
        self._closing = False
        self._state = "starting"
        self.generation = 0
        self.restarts = 0
        self.n_ctx_seq = 0
        conn = self._spawn()  # the first start is synchronous: a model that fails to load raises
        self._reader = threading.Thread(
            target=self._read, args=(conn,), name="llamacpp-supervisor", daemon=True
        )
        self._reader.start()

    # ---- state --------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def state(self) -> str:
        return self._state

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None else None

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    # ---- calls from the engine ----------------------------------------------------------------

    def call(self, kind: str, request: GenerationRequest) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            rid = next(self._ids)
            self._calls[rid] = future
            self._send(("call", rid, kind, request))
        return future

    def submit(self, job_id: int, request: GenerationRequest) -> int:
        """Send a job to the current worker; the generation it went to."""
        with self._lock:
            self._send(("submit", job_id, request))
            return self.generation

    def cancel(self, job_id: int) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(OSError, ValueError):  # the worker is gone: so is the job
                    self._conn.send(("cancel", job_id))

    def _send(self, message: tuple[Any, ...]) -> None:
        if self._conn is None:
            raise EngineCrashed("The inference engine is restarting; retry the request.")
        try:
            self._conn.send(message)
        except (OSError, ValueError) as exc:
            raise EngineCrashed("The inference engine crashed and is restarting; retry the request.") from exc

    def close(self) -> None:
        with self._lock:
            self._closing = True
            conn = self._conn
            if conn is not None:
                with contextlib.suppress(OSError, ValueError):
                    conn.send(("stop",))
        self._reader.join(STOP_TIMEOUT_S + 1)
        process = self._process
        if process is not None:
            _stop(process)

    # ---- the supervisor thread ----------------------------------------------------------------

    def _spawn(self) -> Connection:
        """Start a worker and wait for its `ready`; ModelLoadError if it cannot load."""
        here_sock, there_sock = socket.socketpair()
        fd = there_sock.fileno()
        process = subprocess.Popen(
            [sys.executable, "-m", "kimiserve.engines.llamacpp.worker", str(fd)], pass_fds=(fd,)
        )
        there_sock.close()
        here = Connection(here_sock.detach())
        message: tuple[Any, ...] | None = None
        try:
            here.send(("config", self._config, logging.getLogger().getEffectiveLevel()))
            if here.poll(START_TIMEOUT_S):
                message = here.recv()
        except (EOFError, OSError):
            message = None
        if message is None or message[0] != "ready":
            _stop(process)
            here.close()
            if message is not None and isinstance(message[1], KimiserveError):
                raise message[1]
            raise ModelLoadError(f"The llama.cpp worker did not start (exit code {process.returncode}).")
        with self._lock:
            self._conn = here
            self._process = process
            self.generation += 1
            self.n_ctx_seq = int(message[1]["n_ctx_seq"])
            self._state = "running"
        self._ready.set()
        log.info("llama.cpp worker %s ready (generation %d)", process.pid, self.generation)
        return here

    def _read(self, conn: Connection) -> None:
        current: Connection | None = conn
        while current is not None:
            self._serve(current)
            exit_code = self._reap()
            if self._closing:
                self._state = "closed"
                return
            current = self._restart(exit_code)

    def _serve(self, conn: Connection) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return
            kind = message[0]
            if kind == "events":
                self._emit(message[1], message[2], message[3])
            elif kind == "reply":
                with self._lock:
                    future = self._calls.pop(message[1], None)
                if future is not None:
                    if message[2]:
                        future.set_result(message[3])
                    else:
                        future.set_exception(message[3])

    def _reap(self) -> int | None:
        """The worker's pipe closed: collect it, fail its calls, tell the engine."""
        with self._lock:
            self._ready.clear()
            self._state = "restarting"
            conn, self._conn = self._conn, None
            calls, self._calls = self._calls, {}
            generation = self.generation
        if conn is not None:
            conn.close()
        process = self._process
        exit_code = _stop(process) if process is not None else None
        if not self._closing:
            log.error("llama.cpp worker %s died (exit code %s); restarting it", self.pid, exit_code)
        crashed = EngineCrashed("The inference engine crashed and was restarted; retry the request.")
        for future in calls.values():
            future.set_exception(crashed)
        self._on_down(generation, exit_code)
        return exit_code

    def _restart(self, exit_code: int | None) -> Connection | None:
        delay = 0.0
        while not self._closing:
            time.sleep(delay)
            try:
                conn = self._spawn()
            except KimiserveError:
                log.exception("the llama.cpp worker failed to restart")
                delay = min(max(delay * 2, 0.5), 30.0)
                continue
            self.restarts += 1
            return conn
        self._state = "closed"
        return None


def _stop(process: subprocess.Popen[bytes]) -> int | None:
    """Wait for a worker to exit (killing it if it does not); its exit code."""
    try:
        return process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(STOP_TIMEOUT_S)


def native_crash(exit_code: int | None) -> bool:
    """An exit that says the worker failed by itself (a signal like SIGSEGV/SIGABRT, or exit ≠ 0)."""
    return exit_code is not None and exit_code != 0 and exit_code not in EXTERNAL_SIGNALS
