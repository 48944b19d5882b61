"""Loading a GGUF model into a llama.cpp context, and the vocabulary around it.

Everything native lives behind `NativeModel`: the model and context handles, tokenizing,
token pieces, end-of-generation tokens and metadata. Loading checks the file first (llama.cpp
may abort the process on some malformed files), routes llama.cpp's log lines into `logging`
instead of stderr, and turns every failure into `ModelLoadError`.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import llama_cpp as llama

from kimiserve.engines.llamacpp.config import LlamaCppConfig
from kimiserve.engines.llamacpp.jsonguard import TokenClasses
from kimiserve.errors import ModelLoadError

log = logging.getLogger(__name__)
native_log = logging.getLogger("kimiserve.engines.llamacpp.native")

GGUF_MAGIC = b"GGUF"
# ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continuation (info is load chatter: debug)
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}
ERROR_LEVEL = 4
_log_state: dict[str, Any] = {}
_captured = threading.local()


def _on_native_log(level: int, text: bytes | None, _user_data: Any) -> None:
    if text is None:
        return
    if level == 5:  # continuation of the previous line
        level = _log_state.get("last", 1)
    _log_state["last"] = level
    message = text.decode("utf-8", errors="replace").rstrip()
    if not message:
        return
    lines: list[str] | None = getattr(_captured, "lines", None)
    if lines is not None and level == ERROR_LEVEL:
        lines.append(message)  # the caller turns it into an exception: no error log line
        native_log.debug("%s", message)
    else:
        native_log.log(_LEVELS.get(level, logging.DEBUG), "%s", message)


@contextmanager
def native_errors() -> Iterator[list[str]]:
    """Collect the error lines llama.cpp logs on this thread inside the block."""
    lines: list[str] = []
    _captured.lines = lines
    try:
        yield lines
    finally:
        _captured.lines = None


def route_native_logs() -> None:
    """Send llama.cpp/ggml log lines to `logging` (process-wide; llama_log_set is global)."""
    if "callback" not in _log_state:
        _log_state["callback"] = llama.llama_log_callback(_on_native_log)
    llama.llama_log_set(_log_state["callback"], ctypes.c_void_p(0))


def check_gguf(path: str) -> None:
    """Fail with a clear message unless `path` is a readable file that starts like a GGUF."""
    file = Path(path)
    if not file.is_file():
        raise ModelLoadError(f"Model file not found: {path}")
    try:
        with file.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ModelLoadError(f"Model file cannot be read: {path} ({exc.strerror})") from exc
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"Not a GGUF model file (bad magic bytes): {path}")


class NativeModel:
    """A loaded model and one context with `max_sequences` KV streams.

    Tokenizing and token pieces only read the vocabulary and are safe from any thread; the
    context (decode, samplers, KV memory) must be used from one thread at a time.
    """

    def __init__(self, config: LlamaCppConfig) -> None:
        path = config.resolved_model_path()
        check_gguf(path)
        route_native_logs()
        llama.llama_backend_init()
        model_params = llama.llama_model_default_params()
        model_params.n_gpu_layers = 0
        # The AMX/repack weight layouts crash this llama.cpp build on prompt batches on AMX
        # CPUs, and their kernels differ between one row and many (README.md): see use_repack.
        model_params.use_extra_bufts = config.use_repack
        self.model = llama.llama_model_load_from_file(path.encode(), model_params)
        if not self.model:
            raise ModelLoadError(f"llama.cpp could not load the model file: {path}")
        self.path = path
        self.vocab = llama.llama_model_get_vocab(self.model)
        self.n_vocab: int = llama.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train: int = llama.llama_model_n_ctx_train(self.model)

        params = llama.llama_context_default_params()
        params.n_ctx = config.n_ctx
        params.n_batch = config.n_batch
        params.n_ubatch = config.n_ubatch or config.n_batch
        params.n_seq_max = config.max_sequences
        params.n_threads = config.threads
        params.n_threads_batch = config.threads
        params.kv_unified = config.use_kv_unified  # False: batch-invariant attention (README.md)
        flash = config.use_flash_attn
        params.flash_attn_type = (
            llama.LLAMA_FLASH_ATTN_TYPE_AUTO
            if flash is None
            else llama.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if flash
            else llama.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.no_perf = True
        self.ctx = llama.llama_init_from_model(self.model, params)
        if not self.ctx:
            llama.llama_model_free(self.model)
            self.model = None
            raise ModelLoadError(f"llama.cpp could not create a context for: {path}")
        self.memory = llama.llama_get_memory(self.ctx)
        # A unified KV cache is shared: each sequence may use its share of it, no more.
        shared = llama.llama_n_ctx(self.ctx) // config.max_sequences
        self.n_ctx_seq: int = shared if config.use_kv_unified else llama.llama_n_ctx_seq(self.ctx)
        self.eog_tokens = frozenset(t for t in range(self.n_vocab) if llama.llama_vocab_is_eog(self.vocab, t))
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        # What each token's text starts with or is made of, for `jsonguard.JsonGuard`.
        self.json_tokens = TokenClasses.of([self.piece(t) for t in range(self.n_vocab)])
        self.chat_template = self.meta("tokenizer.chat_template")
        self.bos_text = self._special_text(llama.llama_vocab_bos(self.vocab))
        self.eos_text = self._special_text(llama.llama_vocab_eos(self.vocab))
        log.info(
            "loaded %s: %d sequences x %d tokens of context, %d threads, deterministic=%s "
            "(kv_unified=%s flash_attn=%s repack=%s)",
            Path(path).name,
            config.max_sequences,
            self.n_ctx_seq,
            config.threads,
            config.deterministic,
            config.use_kv_unified,
            config.use_flash_attn,
            config.use_repack,
        )

    def meta(self, key: str) -> str | None:
        size = 1 << 16
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama.llama_model_meta_val_str(self.model, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", errors="replace")
            size = n + 1

    def tokenize(self, text: str) -> list[int]:
        """Tokenize rendered chat text: special tokens are parsed, nothing is added."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (llama.llama_token * capacity)()
        n = llama.llama_tokenize(self.vocab, data, len(data), buf, capacity, False, True)
        if n < 0:
            capacity = -n
            buf = (llama.llama_token * capacity)()
            n = llama.llama_tokenize(self.vocab, data, len(data), buf, capacity, False, True)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for in output text (control tokens render empty)."""
        cached = self._pieces.get(token)
        if cached is None:
            cached = self._render(token, special=False)
            self._pieces[token] = cached
        return cached

    def _render(self, token: int, *, special: bool) -> bytes:
        buf = self._piece_buf
        n = llama.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._render(token, special=True).decode("utf-8", errors="replace")

    def close(self) -> None:
        if self.ctx:
            llama.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            llama.llama_model_free(self.model)
            self.model = None
