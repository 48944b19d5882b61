"""OpenAI-compatible routes: POST /v1/chat/completions, GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from kimiserve.domain.principal import authorize
from kimiserve.errors import KimiserveError
from kimiserve.http.auth import authenticate, bearer_key, caller, services_of
from kimiserve.http.body import read_json
from kimiserve.http.disconnect import CLIENT_CLOSED, ClientDisconnected, unless_disconnected
from kimiserve.http.encoding import SafeJSONResponse as JSONResponse
from kimiserve.http.request_id import request_id_of
from kimiserve.protocols.openai import translate
from kimiserve.protocols.openai.errors import error_response
from kimiserve.protocols.openai.stream import PROTOCOL, open_stream, rate_limit_headers


async def chat_completions(request: Request) -> Response:
    services = services_of(request)
    # One id scheme: the completion id is the request id's, as `chatcmpl-<hex>`.
    # One id scheme: errors and the x-request-id header carry the request id (`req_<hex>`); the
    # completion (and its usage rows) is `chatcmpl-<the same hex>`.
    request_id = request_id_of(request)
    completion_id = "chatcmpl-" + request_id.removeprefix("req_")
    names: dict[str, str] = {}
    try:
        principal = await caller(services, request)
        authorize(principal, "inference")
        chat = translate.parse(await read_json(request, services.settings.max_body_bytes))
        names = translate.param_names(chat)
        call = translate.to_call(chat, completion_id)
        reply = translate.Reply.start(completion_id, chat.model)
        if chat.stream:
            started = await services.inference.start(principal, call)
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            return await open_stream(services, started, reply, include_usage=include_usage, names=names)
        done = await unless_disconnected(request, services.inference.complete(principal, call))
    except ClientDisconnected:
        services.metrics.request(PROTOCOL, "chat.completion", "clientDisconnected")
        return Response(status_code=CLIENT_CLOSED)
    except Exception as exc:
        code = exc.code if isinstance(exc, KimiserveError) else "internalServerError"
        services.metrics.request(PROTOCOL, "chat.completion", code)
        return error_response(exc, request_id, names)
    services.metrics.request(PROTOCOL, "chat.completion", "success")
    return JSONResponse(
        translate.completion(reply, done.results),
        headers=rate_limit_headers(done.admitted),
    )


class Models:
    """GET /v1/models and /v1/models/{id}: every name each served model answers to."""

    def __init__(self) -> None:
        self.created = int(time.time())

    async def list_all(self, request: Request) -> Response:
        services = services_of(request)
        try:
            await authenticate(services, bearer_key(request))
        except Exception as exc:
            return error_response(exc, request_id_of(request))
        data = [e for m in services.registry.models() for e in translate.model_entries(m, self.created)]
        return JSONResponse({"object": "list", "data": data})

    async def get_one(self, request: Request) -> Response:
        services = services_of(request)
        name: str = request.path_params["model_id"]
        try:
            await authenticate(services, bearer_key(request))
            model = services.registry.resolve(name)
        except Exception as exc:
            return error_response(exc, request_id_of(request))
        [entry] = [e for e in translate.model_entries(model, self.created) if e["id"] == name]
        return JSONResponse(entry)


def routes() -> list[BaseRoute]:
    models = Models()
    return [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models.list_all, methods=["GET"]),
        Route("/v1/models/{model_id:path}", models.get_one, methods=["GET"]),
    ]
