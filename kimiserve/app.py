"""create_app(settings) → the ASGI app. The lifespan builds the services and closes them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from kimiserve.protocols.openai.routes import routes as openai_routes
from kimiserve.protocols.runware.routes import routes as runware_routes
from kimiserve.services import Services, build_services
from kimiserve.settings import Settings


async def health(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    results = [await engine.health() for engine in services.registry.engines()]
    ok = all(h.ok for h in results)
    return JSONResponse({"status": "ok" if ok else "degraded"}, status_code=200 if ok else 503)


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
        if on_ready is not None:
            on_ready(built)
        try:
            yield
        finally:
            await built.aclose()

    all_routes: list[BaseRoute] = [Route("/health", health, methods=["GET"])]
    all_routes += openai_routes()  # /v1/chat/completions, /v1/models first: /v1 is Runware's
    all_routes += runware_routes()
    return Starlette(routes=all_routes, lifespan=lifespan)
