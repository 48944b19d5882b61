"""The kimiserve exception tree.

    KimiserveError                       code, status, public message, parameter
    ├── InvalidRequest (400)             a request parameter is missing or wrong
    │   ├── UnsupportedFeature (400)     valid, but not available on this server/model
    │   └── ContextLengthExceeded (400)  prompt + maxTokens do not fit the model
    ├── AuthenticationFailed (401)       missing or invalid API key
    ├── InsufficientCredits (402)
    ├── Forbidden (403)
    ├── NotFound (404)                   unknown model, unknown task
    ├── Conflict (409)                   reused taskUUID
    ├── RateLimited (429)
    ├── ServiceUnavailable (503)         shutting down, engine overloaded
    ├── EngineError (500)                an engine failed; subclasses per failure
    │   ├── ModelLoadError               the model file cannot be loaded
    │   ├── GrammarError (400)           a grammar or schema that cannot be compiled
    │   └── EngineOverloaded (503)
    └── InternalError (500)

Each protocol has exactly one place that maps these to its wire format
(`protocols/runware/errors.py`, `protocols/openai/errors.py`).
"""

from __future__ import annotations


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
    code = "rateLimitExceeded"
    status = 429


class ServiceUnavailable(KimiserveError):
    code = "serviceUnavailable"
    status = 503


class EngineError(KimiserveError):
    code = "inferenceError"
    status = 500


class ModelLoadError(EngineError):
    code = "modelLoadError"


class GrammarError(EngineError):
    code = "invalidGrammar"
    status = 400


class EngineOverloaded(EngineError):
    code = "serviceUnavailable"
    status = 503


class InternalError(KimiserveError):
    code = "internalServerError"
    status = 500
