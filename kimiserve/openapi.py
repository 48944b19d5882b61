"""The API description the server publishes: `/openapi.json`, rendered at `/docs`. It lives
beside the app, not under http/, because it documents every protocol.

Built from the code itself: the Runware task schemas from the strict wire models (seed 000's
bounds), the OpenAI request from its pydantic model, the admin bodies from theirs, and the
admin paths from `http/admin.py`'s endpoint table — so the document cannot drift from the
routes (a test checks both ways).
"""

from __future__ import annotations

import html
import json
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse

from kimiserve.http import admin
from kimiserve.protocols.anthropic.models import CountTokensRequest, MessagesRequest
from kimiserve.protocols.openai.models import ChatCompletionRequest
from kimiserve.protocols.responses.models import ResponsesRequest
from kimiserve.protocols.runware.models import TASK_MODELS

REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = {"type": "object", "description": "An error in the protocol's own format."}
OBJECT = {"type": "object"}


def _path_params(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]


def _runware_post(path: str) -> dict[str, Any]:
    tasks = {"oneOf": [_ref(m.__name__) for m in TASK_MODELS.values()]}
    return {
        "post": {
            "tags": ["Runware"],
            "summary": "Run an array of tasks (textInference, getResponse, imageUpload, …)",
            "description": "Each task succeeds or fails on its own. A single textInference task with "
            "`deliveryMethod: stream` is answered as server-sent events. The same path also accepts "
            f"a WebSocket (ws://…{path}) carrying the same task arrays.",
            "operationId": f"runware_tasks{path.replace('/', '_')}",
            "requestBody": {"required": True, **_json({"type": "array", "items": tasks}, "Task array")},
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {"data": {"type": "array"}, "errors": {"type": "array"}},
                    },
                    "Results (`data`) and per-task errors (`errors`)",
                ),
                "default": _json(ERROR, "Every task failed: `{errors: [...]}`"),
            },
        }
    }


def _responses_paths() -> dict[str, Any]:
    """The Responses API (protocols/responses/routes.py)."""
    error = _json(ERROR, "`{error: {message, type, param, code}}`")
    one = _path_params("response_id")
    return {
        "/v1/responses": {
            "post": {
                "tags": ["OpenAI Responses"],
                "summary": "Create a response (stream: true for the typed server-sent events)",
                "operationId": "create_response",
                "requestBody": {"required": True, **_json(_ref("ResponsesRequest"), "Responses request")},
                "responses": {
                    "200": _json({"type": "object"}, "A response, or its events"),
                    "default": error,
                },
            }
        },
        "/v1/responses/{response_id}": {
            "get": {
                "tags": ["OpenAI Responses"],
                "summary": "A stored response of this account",
                "operationId": "get_response",
                "parameters": one,
                "responses": {"200": _json({"type": "object"}, "The response"), "default": error},
            },
            "delete": {
                "tags": ["OpenAI Responses"],
                "summary": "Delete a stored response of this account",
                "operationId": "delete_response",
                "parameters": one,
                "responses": {"200": _json({"type": "object"}, "response.deleted"), "default": error},
            },
        },
        "/v1/responses/{response_id}/input_items": {
            "get": {
                "tags": ["OpenAI Responses"],
                "summary": "A stored response's input items",
                "operationId": "list_response_input_items",
                "parameters": [
                    *one,
                    {"name": "order", "in": "query", "schema": {"enum": ["asc", "desc"]}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                    },
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {"200": _json({"type": "object"}, "A list of items"), "default": error},
            }
        },
    }


def _anthropic_paths() -> dict[str, Any]:
    error = _json(ERROR, '`{type: "error", error: {type, message}, request_id}` (529: overloaded)')
    return {
        "/v1/messages": {
            "post": {
                "tags": ["Anthropic-compatible"],
                "summary": "Create a message (stream: true for Anthropic's server-sent events)",
                "operationId": "anthropic_messages",
                "requestBody": {"required": True, **_json(_ref("MessagesRequest"), "Messages request")},
                "responses": {
                    "200": _json(OBJECT, "A message, or message_start … message_stop events"),
                    "default": error,
                },
            }
        },
        "/v1/messages/count_tokens": {
            "post": {
                "tags": ["Anthropic-compatible"],
                "summary": "Count a Messages request's input tokens",
                "operationId": "anthropic_count_tokens",
                "requestBody": {"required": True, **_json(_ref("CountTokensRequest"), "Count request")},
                "responses": {"200": _json(OBJECT, "`{input_tokens}`"), "default": error},
            }
        },
    }


def document(routes_base_url: str = "") -> dict[str, Any]:
    bodies: list[type[BaseModel]] = [
        *TASK_MODELS.values(),
        ChatCompletionRequest,
        MessagesRequest,
        CountTokensRequest,
        ResponsesRequest,
        *admin.BODIES.values(),
    ]
    _, schemas = models_json_schema([(m, "validation") for m in bodies], ref_template=REF, by_alias=True)
    paths: dict[str, Any] = {
        "/": _runware_post("/"),
        "/v1": _runware_post("/v1"),
        "/v1/chat/completions": {
            "post": {
                "tags": ["OpenAI-compatible"],
                "summary": "Create a chat completion (stream: true for server-sent events)",
                "operationId": "chat_completions",
                "requestBody": {"required": True, **_json(_ref("ChatCompletionRequest"), "Chat request")},
                "responses": {
                    "200": _json({"type": "object"}, "A chat.completion, or chat.completion.chunk events"),
                    "default": _json(ERROR, "`{error: {message, type, param, code}}`"),
                },
            }
        },
        **_anthropic_paths(),
        **_responses_paths(),
        "/v1/models": {
            "get": {
                "tags": ["OpenAI-compatible"],
                "summary": "List served models and their aliases",
                "operationId": "list_models",
                "responses": {"200": _json({"type": "object"}, "A list of models")},
            }
        },
        "/v1/models/{model_id}": {
            "get": {
                "tags": ["OpenAI-compatible"],
                "summary": "One served model",
                "operationId": "get_model",
                "parameters": [
                    {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _json({"type": "object"}, "A model"),
                    "default": _json(ERROR, "Unknown"),
                },
            }
        },
        "/health": {
            "get": {
                "tags": ["Operations"],
                "summary": "Engine health",
                "operationId": "health",
                "security": [],
                "responses": {
                    "200": _json({"type": "object"}, "ok"),
                    "503": _json({"type": "object"}, "degraded"),
                },
            }
        },
        "/metrics": {
            "get": {
                "tags": ["Operations"],
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "security": [],
                "responses": {
                    "200": {"description": "Prometheus text format", "content": {"text/plain": {}}}
                },
            }
        },
        "/media/{image_uuid}": {
            "get": {
                "tags": ["Runware"],
                "summary": "An uploaded image, by its imageUUID",
                "operationId": "media",
                "security": [],
                "parameters": _path_params("image_uuid"),
                "responses": {"200": {"description": "The image"}, "404": _json(ERROR, "No such image")},
            }
        },
    }
    for path, method, handler, body in admin.ENDPOINTS:
        operation: dict[str, Any] = {
            "tags": ["Admin"],
            "summary": (handler.__doc__ or "").strip(),
            "operationId": f"admin_{handler.__name__}",
            "responses": {
                "200": _json({"type": "object"}, "The result"),
                "default": _json(ERROR, "An error"),
            },
        }
        names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
        if names:
            operation["parameters"] = _path_params(*names)
        if body is not None:
            operation["requestBody"] = {"required": True, **_json(_ref(body), body)}
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kimiserve",
            "version": "0.1.0",
            "description": "The Kimi K2.6 text-inference API, self-hosted: Runware tasks, "
            "OpenAI-compatible chat completions, the OpenAI Responses API and the Anthropic-compatible "
            "Messages API.",
        },
        "servers": [{"url": routes_base_url or "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
    }


async def openapi_json(request: Request) -> JSONResponse:
    return JSONResponse(document())


async def docs(request: Request) -> HTMLResponse:
    """A plain rendering of the document: no script, nothing fetched from elsewhere."""
    doc = document()
    rows = []
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            shown = html.escape(json.dumps(body, indent=2))
            schema = f"<details><summary>request body</summary><pre>{shown}</pre></details>" if body else ""
            tag, summary = html.escape(op.get("tags", [""])[0]), html.escape(op["summary"])
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{tag}</td><td>{summary}{schema}</td></tr>"
            )
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>kimiserve API</title>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        "<style>body{font:15px system-ui,sans-serif;margin:2rem auto;max-width:70rem;padding:0 1rem}"
        "table{border-collapse:collapse;width:100%}"
        "td{border-top:1px solid #ddd;padding:.4rem;vertical-align:top}"
        "pre{max-height:30rem;overflow:auto;background:#f6f6f6;padding:.5rem}</style></head><body>"
        f"<h1>{html.escape(doc['info']['title'])} API</h1><p>{html.escape(doc['info']['description'])}</p>"
        "<p>Machine-readable: <a href=/openapi.json>/openapi.json</a> (OpenAPI 3.1).</p>"
        f"<table><tbody>{''.join(rows)}</tbody></table></body></html>"
    )
    return HTMLResponse(page)
