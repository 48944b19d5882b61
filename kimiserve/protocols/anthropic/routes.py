"""Anthropic Messages routes: POST /v1/messages and POST /v1/messages/count_tokens.

The key comes from `x-api-key` or `Authorization: Bearer`; `anthropic-version` and
`anthropic-beta` are accepted and not needed (one version of the API is served). The model
name may be a served name or one `model_map` (settings) maps to a served model.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from kimiserve.domain.principal import authorize
from kimiserve.errors import KimiserveError
from kimiserve.http.auth import caller, services_of
from kimiserve.http.body import read_json
from kimiserve.http.context import Context
from kimiserve.http.disconnect import CLIENT_CLOSED, ClientDisconnected, unless_disconnected
from kimiserve.http.encoding import SafeJSONResponse
from kimiserve.http.request_id import request_id_of
from kimiserve.protocols.anthropic import translate
from kimiserve.protocols.anthropic.errors import error_response
from kimiserve.protocols.anthropic.models import CountTokensRequest, MessagesRequest
from kimiserve.protocols.anthropic.stream import PROTOCOL, open_stream


def _status(exc: BaseException) -> str:
    return exc.code if isinstance(exc, KimiserveError) else "internalServerError"


def _served(services: Context, name: str) -> str:
    return translate.served_name(name, services.registry, services.settings.model_map)


async def messages(request: Request) -> Response:
    services = services_of(request)
    request_id = request_id_of(request)
    message_id = translate.message_id(request_id)
    try:
        principal = await caller(services, request, x_api_key=True)
        authorize(principal, "inference")
        body = await read_json(request, services.settings.max_body_bytes)
        wire = translate.parse(body, MessagesRequest)
        call = translate.to_call(wire, _served(services, wire.model), message_id)
        if wire.stream:
            started = await services.inference.start(principal, call)
            return await open_stream(services, started, message_id, wire.model, request_id)
        done = await unless_disconnected(request, services.inference.complete(principal, call))
    except ClientDisconnected:
        services.metrics.request(PROTOCOL, "messages", "clientDisconnected")
        return Response(status_code=CLIENT_CLOSED)
    except Exception as exc:
        services.metrics.request(PROTOCOL, "messages", _status(exc))
        return error_response(exc, request_id)
    services.metrics.request(PROTOCOL, "messages", "success")
    [result] = done.results
    return SafeJSONResponse(
        translate.message(message_id, wire.model, result), headers={"request-id": request_id}
    )


async def count_tokens(request: Request) -> Response:
    services = services_of(request)
    request_id = request_id_of(request)
    try:
        principal = await caller(services, request, x_api_key=True)
        body = await read_json(request, services.settings.max_body_bytes)
        wire = translate.parse(body, CountTokensRequest)
        call = translate.to_call(wire, _served(services, wire.model), translate.message_id(request_id))
        tokens = await services.inference.count(principal, call)
    except Exception as exc:
        services.metrics.request(PROTOCOL, "messages.count_tokens", _status(exc))
        return error_response(exc, request_id)
    services.metrics.request(PROTOCOL, "messages.count_tokens", "success")
    return SafeJSONResponse({"input_tokens": tokens}, headers={"request-id": request_id})


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
    ]
