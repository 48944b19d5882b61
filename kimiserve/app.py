"""create_app(settings) → the ASGI app. The lifespan builds the services and closes them."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Scope

from kimiserve import dashboard, openapi
from kimiserve.errors import KimiserveError
from kimiserve.http import admin
from kimiserve.http.encoding import SafeJSONResponse
from kimiserve.http.metrics import CONTENT_TYPE
from kimiserve.http.notfound import protocol_of
from kimiserve.http.request_id import RequestIdMiddleware
from kimiserve.http.shutdown import Drain, DrainMiddleware
from kimiserve.http.stall import StallGuard
from kimiserve.platform.shared_redis import SessionBuffers
from kimiserve.protocols.anthropic.errors import error_response as anthropic_error
from kimiserve.protocols.anthropic.routes import routes as anthropic_routes
from kimiserve.protocols.openai.errors import error_response as openai_error
from kimiserve.protocols.openai.routes import routes as openai_routes
from kimiserve.protocols.responses.errors import error_response as responses_error
from kimiserve.protocols.responses.routes import routes as responses_routes
from kimiserve.protocols.runware.errors import error_item, status_of
from kimiserve.protocols.runware.routes import routes as runware_routes
from kimiserve.protocols.runware.sessions import SessionRegistry
from kimiserve.protocols.runware.ws import routes as runware_ws_routes
from kimiserve.services import Services, build_services
from kimiserve.settings import Settings


async def health(request: Request) -> SafeJSONResponse:
    services: Services = request.app.state.services
    results = [await engine.health() for engine in services.registry.engines()]
    ok = all(h.ok for h in results)
    return SafeJSONResponse({"status": "ok" if ok else "degraded"}, status_code=200 if ok else 503)


async def media(request: Request) -> Response:
    """An uploaded image, by its imageUUID (unguessable, like a CDN link)."""
    services: Services = request.app.state.services
    found = await services.media.find(request.path_params["image_uuid"])
    if found is None:
        return SafeJSONResponse(
            {"errors": [{"code": "notFound", "message": "No such image."}]}, status_code=404
        )
    path, content_type = found
    return FileResponse(path, media_type=content_type, headers={"Cache-Control": "public, max-age=86400"})


async def metrics(request: Request) -> Response:
    services: Services = request.app.state.services
    return Response(services.metrics.render(), media_type=CONTENT_TYPE)


def refusal(scope: Scope, exc: BaseException) -> Response:
    """An error outside any route (shutting down, no such route, a bug), in the format of the
    protocol the request speaks (`http/notfound.py` decides which)."""
    protocol = protocol_of(scope)
    request_id = f"req_{uuid.uuid4().hex}"
    if protocol == "anthropic":
        return anthropic_error(exc, request_id)
    if protocol == "responses":
        return responses_error(exc, request_id)
    if protocol == "openai":
        return openai_error(exc, request_id)
    item = error_item(exc, task_type=None, task_uuid=None)
    return SafeJSONResponse({"errors": [item]}, status_code=status_of(exc))


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, method not allowed) as JSON, not text/plain."""
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        error = KimiserveError(f"No route {where} on this server.", code="notFound")
    elif exc.status_code == 405:
        error = KimiserveError(f"Method not allowed: {where}.", code="methodNotAllowed")
    else:
        error = KimiserveError(exc.detail, code="invalidRequest")
    error.status = exc.status_code
    response = refusal(request.scope, error)
    response.status_code = exc.status_code
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """The last resort for a bug: a logged 500 in the protocol's JSON format, never text/plain."""
    return refusal(request.scope, exc)


def create_app(
    settings: Settings,
    services: Services | None = None,
    on_ready: Callable[[Services], None] | None = None,
) -> Starlette:
    """The app. `services` may be given pre-built (tests); `on_ready` runs once they are built.

    `app.state.drain` is the graceful shutdown: the server runs it on SIGTERM (cli/serve.py).
    """
    drain = Drain(settings.shutdown_grace_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        built = services if services is not None else await build_services(settings)
        app.state.services = built
        shared_buffers = None
        if built.shared_redis is not None:  # several replicas: session buffers in Redis (issue 13)
            shared_buffers = SessionBuffers(built.shared_redis)
            await shared_buffers.start()
        sessions = SessionRegistry(
            built.settings.ws_session_ttl_s, built.settings.ws_send_queue, buffers=shared_buffers
        )
        app.state.runware_sessions = sessions
        if on_ready is not None:
            on_ready(built)
        try:
            yield
        finally:
            await sessions.aclose()
            if shared_buffers is not None:
                await shared_buffers.aclose()
            await built.aclose()

    # The inference routes first: the router tries each route's pattern in turn, per request.
    all_routes: list[BaseRoute] = []
    all_routes += openai_routes()  # /v1/chat/completions, /v1/models first: /v1 is Runware's
    all_routes += anthropic_routes()  # /v1/messages, /v1/messages/count_tokens
    all_routes += responses_routes()  # /v1/responses
    all_routes += runware_routes()
    all_routes += runware_ws_routes()  # WebSocket at / and /v1, beside POST on the same paths
    all_routes += [
        Route("/health", health, methods=["GET"]),
        Route("/media/{image_uuid}", media, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
        Route("/docs", openapi.docs, methods=["GET"]),
    ]
    all_routes += admin.routes()
    all_routes += dashboard.routes()  # /dashboard: pages, static assets, the playground's chat
    app = Starlette(
        routes=all_routes,
        lifespan=lifespan,
        middleware=[
            Middleware(RequestIdMiddleware),
            Middleware(DrainMiddleware, drain=drain, refuse=refusal),
            Middleware(StallGuard, timeout_s=settings.stream_write_timeout_s),
        ],
        exception_handlers={HTTPException: http_error, Exception: unexpected_error},
    )
    app.state.drain = drain
    return app
