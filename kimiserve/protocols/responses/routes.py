"""Responses API routes: POST /v1/responses; GET and DELETE /v1/responses/{id}; GET
/v1/responses/{id}/input_items. Stored responses are the account's (`domain/responses.py`)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from kimiserve.domain.principal import Principal, authorize
from kimiserve.domain.responses import StoredResponses
from kimiserve.errors import InvalidRequest, KimiserveError
from kimiserve.http.auth import caller, services_of
from kimiserve.http.body import read_json
from kimiserve.http.context import Context
from kimiserve.http.disconnect import CLIENT_CLOSED, ClientDisconnected, unless_disconnected
from kimiserve.http.encoding import SafeJSONResponse as JSONResponse
from kimiserve.http.request_id import request_id_of
from kimiserve.protocols.responses import translate
from kimiserve.protocols.responses.errors import error_response
from kimiserve.protocols.responses.stream import OPERATION, PROTOCOL, open_stream

MAX_LIST = 100


def _stored(services: Context) -> StoredResponses:
    return StoredResponses(services.tasks.store)


def _code(exc: BaseException) -> str:
    return exc.code if isinstance(exc, KimiserveError) else "internalServerError"


async def create(request: Request) -> Response:
    services = services_of(request)
    request_id = request_id_of(request)
    try:
        principal = await caller(services, request)
        authorize(principal, "inference")
        req = translate.parse(await read_json(request, services.settings.max_body_bytes))
        stored = _stored(services)
        context: list[dict[str, Any]] = []
        if req.previous_response_id is not None:
            previous = await stored.get(principal, req.previous_response_id, parameter="previous_response_id")
            context = previous.conversation()
        response_id = translate.new_response_id()
        call = translate.to_call(req, response_id, context)
        reply = translate.Reply.start(response_id, req)
        items = translate.input_items(req, response_id)

        async def save(response: dict[str, Any], delivery: str) -> None:
            if req.store is not False:
                await stored.save(principal, response, items, context, delivery)

        if req.stream:
            started = await services.inference.start(principal, call)
            return await open_stream(services, started, reply, lambda r: save(r, "stream"))
        done = await unless_disconnected(request, services.inference.complete(principal, call))
        body = translate.response(reply, done.results[0])
        await save(body, "sync")
    except ClientDisconnected:
        services.metrics.request(PROTOCOL, OPERATION, "clientDisconnected")
        return Response(status_code=CLIENT_CLOSED)
    except Exception as exc:
        services.metrics.request(PROTOCOL, OPERATION, _code(exc))
        return error_response(exc, request_id)
    services.metrics.request(PROTOCOL, OPERATION, "success")
    return JSONResponse(body)


async def _reader(request: Request) -> tuple[Context, Principal, str]:
    services = services_of(request)
    principal = await caller(services, request)
    authorize(principal, "tasks:read")
    return services, principal, request.path_params["response_id"]


async def retrieve(request: Request) -> Response:
    try:
        services, principal, response_id = await _reader(request)
        found = await _stored(services).get(principal, response_id)
    except Exception as exc:
        return error_response(exc, request_id_of(request))
    return JSONResponse(found.response)


async def delete(request: Request) -> Response:
    try:
        services, principal, response_id = await _reader(request)
        await _stored(services).delete(principal, response_id)
    except Exception as exc:
        return error_response(exc, request_id_of(request))
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


async def input_items(request: Request) -> Response:
    """This response's own input items (not the earlier conversation), newest first unless
    `order=asc`, `limit` (1-100, default 20) after the item `after`."""
    try:
        services, principal, response_id = await _reader(request)
        query = request.query_params
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequest("order must be 'asc' or 'desc'.", parameter="order")
        raw_limit = query.get("limit", "20")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIST:
            raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIST}.", parameter="limit")
        found = await _stored(services).get(principal, response_id)
    except Exception as exc:
        return error_response(exc, request_id_of(request))
    items = found.input_items if order == "asc" else list(reversed(found.input_items))
    after = query.get("after")
    if after is not None:
        ids = [i.get("id") for i in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[: int(raw_limit)]
    return JSONResponse(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > len(page),
        }
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/responses", create, methods=["POST"]),
        Route("/v1/responses/{response_id}", retrieve, methods=["GET"]),
        Route("/v1/responses/{response_id}", delete, methods=["DELETE"]),
        Route("/v1/responses/{response_id}/input_items", input_items, methods=["GET"]),
    ]
