"""create_app(settings) → the ASGI app. The lifespan builds the services and closes them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from kimiserve.http import admin, openapi
from kimiserve.http.metrics import CONTENT_TYPE
from kimiserve.http.request_id import RequestIdMiddleware
from kimiserve.protocols.openai.routes import routes as openai_routes
from kimiserve.protocols.runware.routes import routes as runware_routes
from kimiserve.protocols.runware.sessions import SessionRegistry
from kimiserve.protocols.runware.ws import routes as runware_ws_routes
from kimiserve.services import Services, build_services
from kimiserve.settings import Settings


async def health(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    results = [await engine.health() for engine in services.registry.engines()]
    ok = all(h.ok for h in results)
    return JSONResponse({"status": "ok" if ok else "degraded"}, status_code=200 if ok else 503)


async def media(request: Request) -> Response:
    """An uploaded image, by its imageUUID (unguessable, like a CDN link)."""
    services: Services = request.app.state.services
    found = await services.media.find(request.path_params["image_uuid"])
    if found is None:
        return JSONResponse({"errors": [{"code": "notFound", "message": "No such image."}]}, status_code=404)
    path, content_type = found
    return FileResponse(path, media_type=content_type, headers={"Cache-Control": "public, max-age=86400"})


async def metrics(request: Request) -> Response:
    services: Services = request.app.state.services
    return Response(services.metrics.render(), media_type=CONTENT_TYPE)


def create_app(
    settings: Settings,
    services: Services | None = None,
    on_ready: Callable[[Services], None] | None = None,
) -> Starlette:
    """The app. `services` may be given pre-built (tests); `on_ready` runs once they are built."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        built = services if services is not None else await build_services(settings)
        app.state.services = built
        sessions = SessionRegistry(built.settings.ws_session_ttl_s, built.settings.ws_send_queue)
        app.state.runware_sessions = sessions
        if on_ready is not None:
            on_ready(built)
        try:
            yield
        finally:
            await sessions.aclose()
            await built.aclose()

    all_routes: list[BaseRoute] = [
        Route("/health", health, methods=["GET"]),
        Route("/media/{image_uuid}", media, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
        Route("/docs", openapi.docs, methods=["GET"]),
    ]
    all_routes += admin.routes()
    all_routes += openai_routes()  # /v1/chat/completions, /v1/models first: /v1 is Runware's
    all_routes += runware_routes()
    all_routes += runware_ws_routes()  # WebSocket at / and /v1, beside POST on the same paths
    return Starlette(routes=all_routes, lifespan=lifespan, middleware=[Middleware(RequestIdMiddleware)])
