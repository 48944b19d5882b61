"""The worker process: one engine core (llama.cpp, llguidance) apart from the server.

`python -m kimiserve.engines.llamacpp.worker FD` is the process (started by `supervisor.py`);
FD is its end of a socket pair, used as a `multiprocessing.connection.Connection`. The first
message is `("config", LlamaCppConfig, log level)`; `serve` then loads the core, says
`("ready", info)` and serves messages until told to stop or
until the pipe closes (the server went away). Messages, all tuples:

    server → worker   ("call", rid, "check" | "tokenize", request) · ("submit", job_id, request)
                      ("cancel", job_id) · ("stop",)
    worker → server   ("ready", {"n_ctx_seq", "pid"}) · ("failed", error)
                      ("reply", rid, ok, value_or_error)
                      ("events", [(job_id, [item, ...]), ...], active, waiting)   once per step

Events are batched per scheduler step: one pickled message carries the new tokens of every
sequence, so the boundary costs one pipe write per step, not one per token. Checks and
submissions run on a small thread pool (grammar compilation can take a while; the receiving
loop never blocks on it).
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from kimiserve.domain.types import GenerationRequest
from kimiserve.engines.llamacpp.config import LlamaCppConfig
from kimiserve.engines.llamacpp.core import Core
from kimiserve.engines.llamacpp.job import Batch
from kimiserve.errors import KimiserveError


def serve(config: LlamaCppConfig, conn: Connection, log_level: int = logging.WARNING) -> None:
    logging.basicConfig(level=log_level, format="%(levelname)s llamacpp-worker %(name)s: %(message)s")
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            conn.send(message)

    def emit(batch: Batch, active: int, waiting: int) -> None:
        with contextlib.suppress(OSError, ValueError):  # the server is gone; the receiving loop ends us
            send(("events", batch, active, waiting))

    try:
        core = Core(config, emit)
    except KimiserveError as exc:
        send(("failed", exc))
        return
    # A scheduler that failed (a bug) leaves a useless process: exit, and be restarted.
    core.scheduler.on_failure = lambda: os._exit(70)
    send(("ready", {"n_ctx_seq": core.n_ctx_seq, "pid": os.getpid()}))
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="worker-calls")

    def call(rid: int, kind: str, request: GenerationRequest) -> None:
        try:
            # check: the prompt's token count (the pipeline holds credit for it); tokenize: the tokens
            value: Any = len(core.check(request)) if kind == "check" else core.tokenize(request)
            send(("reply", rid, True, value))
        except KimiserveError as exc:
            send(("reply", rid, False, exc))
        except Exception as exc:  # a bug: the caller gets an EngineError, we keep serving
            logging.getLogger(__name__).exception("worker call %s failed", kind)
            send(("reply", rid, False, KimiserveError(f"The engine failed: {type(exc).__name__}")))

    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "submit":
                pool.submit(core.submit, message[1], message[2])
            elif kind == "cancel":
                core.cancel(message[1])
            elif kind == "call":
                pool.submit(call, message[1], message[2], message[3])
            elif kind == "stop":
                break
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        core.close()
        conn.close()


def main() -> None:
    faulthandler.enable()  # a native crash leaves its Python stacks in the server's stderr
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: where is it?
    conn = Connection(int(sys.argv[1]))
    try:
        message = conn.recv()
    except (EOFError, OSError):
        return
    _, config, log_level = message
    serve(config, conn, log_level)


if __name__ == "__main__":
    main()
