"""Foreign failures turned into kimiserve errors at the boundary.

    UpstreamUnavailable (ServiceUnavailable, 503)  refused connection, 5xx, 429: the replica's fault
    UpstreamTimeout     (EngineError, 504)         connect/read timeout (code timeoutProvider)
    UpstreamBroken      (EngineError, 502)         the stream died or broke the protocol mid-way

`settles_delivered` (UpstreamBroken; UpstreamTimeout raised mid-stream): the pipeline charges a
streamed generation for the tokens it delivered before the failure (domain/metering.py).

`replica_fault` marks the errors a pool ejects a replica for (and retries elsewhere when nothing
was delivered yet). An upstream 4xx is the request's fault: an `InvalidRequest` naming the
parameter the upstream named.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from kimiserve.errors import (
    ContextLengthExceeded,
    EngineError,
    InvalidRequest,
    KimiserveError,
    ServiceUnavailable,
)


class UpstreamUnavailable(ServiceUnavailable):
    code = "serviceUnavailable"
    replica_fault = True


class UpstreamTimeout(EngineError):
    code = "timeoutProvider"
    status = 504
    replica_fault = True


class UpstreamBroken(EngineError):
    code = "inferenceError"
    status = 502
    replica_fault = True
    settles_delivered = True  # raised once the stream has started: what it delivered is charged


def is_replica_fault(exc: BaseException) -> bool:
    return bool(getattr(exc, "replica_fault", False))


def from_transport(exc: aiohttp.ClientError | TimeoutError, label: str, *, streaming: bool) -> KimiserveError:
    """An aiohttp transport failure or timeout (its message is not repeated: only the class of
    failure and the upstream's URL are, never its key)."""
    if isinstance(exc, TimeoutError):  # aiohttp's timeouts are TimeoutErrors too
        what = "connect" if isinstance(exc, aiohttp.ConnectionTimeoutError) else "respond"
        timeout = UpstreamTimeout(f"The upstream {label} did not {what} in time.")
        timeout.settles_delivered = streaming  # a stream that stalled after it started
        return timeout
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamUnavailable(f"The upstream {label} refused the connection.")
    if streaming:
        return UpstreamBroken(f"The upstream {label} closed the stream before it finished.")
    return UpstreamUnavailable(f"The upstream {label} failed: {type(exc).__name__}.")


def error_fields(body: Any) -> tuple[str, str | None]:
    """(message, param) from an OpenAI/vLLM error body: `{"error": {message, type, param, code}}`,
    or vLLM's older flat `{"object": "error", "message", "param", …}`."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            message = inner.get("message")
            param = inner.get("param")
            return (
                str(message) if message else json.dumps(body)[:300],
                str(param) if isinstance(param, str) and param else None,
            )
        if isinstance(inner, str):
            return inner, None
    return str(body)[:300], None


def from_status(status: int, raw: bytes, label: str) -> KimiserveError:
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode("utf-8", "replace")
    message, param = error_fields(body)
    if status in (400, 404, 413, 422):
        if status == 404 and param is None and "model" in message.lower():
            return UpstreamUnavailable(f"The upstream {label} does not serve the configured model: {message}")
        lowered = message.lower()
        if "context length" in lowered or "context_length" in lowered or "too long" in lowered:
            return ContextLengthExceeded(f"The upstream refused the request: {message}", parameter=param)
        return InvalidRequest(f"The upstream refused the request: {message}", parameter=param)
    if status in (401, 403):
        # Our credentials, not the client's: never shown as the client's mistake.
        return UpstreamUnavailable(f"The upstream {label} refused kimiserve's credentials ({status}).")
    if status == 429 or status >= 500:
        return UpstreamUnavailable(f"The upstream {label} is unavailable ({status}): {message}")
    return EngineError(f"The upstream {label} answered {status}: {message}")


def from_stream_error(body: Any, label: str) -> KimiserveError:
    """An error sent in-band, as vLLM does once a stream has started: `data: {"error": {…}}`."""
    message, _ = error_fields(body)
    return UpstreamBroken(f"The upstream {label} failed mid-stream: {message}")
