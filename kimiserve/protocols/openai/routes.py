"""OpenAI-compatible routes: POST /v1/chat/completions, GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from kimiserve.domain.inference import fan_out
from kimiserve.http.auth import authenticate, bearer_key, services_of
from kimiserve.http.body import read_json
from kimiserve.http.encoding import SafeJSONResponse as JSONResponse
from kimiserve.protocols.openai import translate
from kimiserve.protocols.openai.errors import error_response
from kimiserve.protocols.openai.stream import PROTOCOL, open_stream

T = TypeVar("T")

CLIENT_CLOSED = 499


class ClientDisconnected(Exception):
    """The client left before a non-streamed reply was ready."""


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (the body is already read)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise ClientDisconnected
    finally:
        for pending in (task, watcher):
            pending.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)


async def chat_completions(request: Request) -> Response:
    services = services_of(request)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    names: dict[str, str] = {}
    try:
        principal = await authenticate(services, bearer_key(request))
        chat = translate.parse(await read_json(request, services.settings.max_body_bytes))
        names = translate.param_names(chat)
        model = services.registry.resolve(chat.model)
        base = translate.to_generation_request(chat, model)
        await services.inference.admit(principal)
        generations = fan_out(base, chat.seed, chat.n or 1)
        reply = translate.Reply.start(request_id, chat.model)
        if chat.stream:
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            return await open_stream(
                services, principal, model, generations, reply, include_usage=include_usage, names=names
            )
        results = await _unless_disconnected(
            request,
            services.inference.run_all(
                principal, model, generations, request_id=request_id, protocol=PROTOCOL
            ),
        )
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED)
    except Exception as exc:
        return error_response(exc, request_id, names)
    return JSONResponse(translate.completion(reply, results), headers={"x-request-id": request_id})


class Models:
    """GET /v1/models and /v1/models/{id}: every name each served model answers to."""

    def __init__(self) -> None:
        self.created = int(time.time())

    async def list_all(self, request: Request) -> Response:
        services = services_of(request)
        try:
            await authenticate(services, bearer_key(request))
        except Exception as exc:
            return error_response(exc, f"req_{uuid.uuid4().hex}")
        data = [e for m in services.registry.models() for e in translate.model_entries(m, self.created)]
        return JSONResponse({"object": "list", "data": data})

    async def get_one(self, request: Request) -> Response:
        services = services_of(request)
        name: str = request.path_params["model_id"]
        try:
            await authenticate(services, bearer_key(request))
            model = services.registry.resolve(name)
        except Exception as exc:
            return error_response(exc, f"req_{uuid.uuid4().hex}")
        [entry] = [e for e in translate.model_entries(model, self.created) if e["id"] == name]
        return JSONResponse(entry)


def routes() -> list[BaseRoute]:
    models = Models()
    return [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models.list_all, methods=["GET"]),
        Route("/v1/models/{model_id:path}", models.get_one, methods=["GET"]),
    ]
