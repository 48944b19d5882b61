"""The kimiserve exception tree.

    KimiserveError                       code, status, public message, parameter
    ├── InvalidRequest (400)             a request parameter is missing or wrong
    │   ├── UnsupportedFeature (400)     valid, but not available on this server/model
    │   ├── ContextLengthExceeded (400)  prompt + output tokens asked for exceed the context
    │   ├── GrammarError (400)           a grammar or schema that cannot be compiled (in budget)
    │   └── RequestCrashedEngine (400)   this exact request was in flight during repeated crashes
    ├── AuthenticationFailed (401)       missing or invalid API key
    ├── InsufficientCredits (402)
    ├── Forbidden (403)
    ├── NotFound (404)                   unknown model, unknown task
    ├── Conflict (409)                   reused taskUUID
    ├── RateLimited (429)
    ├── ServiceUnavailable (503)         shutting down, engine overloaded
    ├── EngineError (500)                an engine failed; subclasses per failure
    │   ├── ModelLoadError               the model file cannot be loaded
    │   ├── EngineCrashed (503)          the engine's worker died mid-request; it restarts
    │   └── EngineOverloaded (503)
    └── InternalError (500)

Each protocol has exactly one place that maps these to its wire format
(`protocols/runware/errors.py`, `protocols/openai/errors.py`).
"""

from __future__ import annotations

import logging
import uuid

log = logging.getLogger(__name__)


class KimiserveError(Exception):
    """Base of every error kimiserve raises on purpose."""

    code: str = "internalServerError"
    status: int = 500

    def __init__(
        self,
        message: str,
        *,
        parameter: str | None = None,
        code: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.parameter = parameter
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class InvalidRequest(KimiserveError):
    code = "invalidParameter"
    status = 400


class UnsupportedFeature(InvalidRequest):
    code = "unsupportedFeature"


class ContextLengthExceeded(InvalidRequest):
    code = "contextLengthExceeded"


class AuthenticationFailed(KimiserveError):
    code = "invalidApiKey"
    status = 401


class InsufficientCredits(KimiserveError):
    code = "insufficientCredits"
    status = 402


class Forbidden(KimiserveError):
    code = "forbidden"
    status = 403


class NotFound(KimiserveError):
    code = "notFound"
    status = 404


class Conflict(KimiserveError):
    code = "conflictTaskUUID"
    status = 409


class RateLimited(KimiserveError):
    """Over a rate limit; `retry_after_s` is when the same request can succeed (Retry-After)."""

    code = "rateLimitExceeded"
    status = 429

    def __init__(self, message: str, *, parameter: str | None = None, retry_after_s: float = 1.0) -> None:
        super().__init__(message, parameter=parameter)
        self.retry_after_s = retry_after_s


class ServiceUnavailable(KimiserveError):
    code = "serviceUnavailable"
    status = 503


class EngineError(KimiserveError):
    code = "inferenceError"
    status = 500
    # True: raised after the engine's output began reaching the client (an upstream that died
    # mid-stream); the pipeline charges a streamed generation for what it delivered before it.
    settles_delivered: bool = False


class ModelLoadError(EngineError):
    code = "modelLoadError"


class GrammarError(InvalidRequest):
    """The client's schema or grammar: a 400 naming it, never an engine failure."""

    code = "invalidGrammar"


class RequestCrashedEngine(InvalidRequest):
    """This exact request (prompt and constraint) was in flight during repeated engine crashes."""


class EngineCrashed(EngineError):
    """The engine's worker process died during the request; it restarts by itself."""

    code = "inferenceError"
    status = 503


class EngineOverloaded(EngineError):
    code = "serviceUnavailable"
    status = 503


class InternalError(KimiserveError):
    code = "internalServerError"
    status = 500


_CONVERTED = "_kimiserve_error"  # where an unexpected exception keeps its one conversion


def as_kimiserve_error(exc: BaseException) -> KimiserveError:
    """Any exception as a KimiserveError: the one converter. An unexpected one is logged once,
    with a reference that the returned InternalError repeats; converting the same exception again
    (stored with its task, then rendered) returns the same error, so one failure has one reference."""
    if isinstance(exc, KimiserveError):
        return exc
    converted = getattr(exc, _CONVERTED, None)
    if isinstance(converted, KimiserveError):
        return converted
    ref = uuid.uuid4().hex[:12]
    log.error("internal error ref=%s", ref, exc_info=exc)
    converted = InternalError(f"Internal server error (reference {ref}).")
    setattr(exc, _CONVERTED, converted)
    return converted
