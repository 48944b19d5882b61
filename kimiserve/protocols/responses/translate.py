"""Responses API wire ↔ domain: a request (and the stored conversation before it) → a `Call`;
results → output items and the response object.

Input items become canonical messages: `message` items by role (developer → system),
`function_call` items join the assistant turn before them as its tool calls,
`function_call_output` items become tool messages, and `reasoning` items become the next
assistant turn's reasoning (kept in the prompt, as a client that sends reasoning back asks).
What the served model cannot do is checked by the front door, with the names in `parameters`.

(About 600 lines on purpose: the request side and the reply side share the item shapes and ids
— `function_call` items, `call_id`s, namespaces — that a round trip must give back as it took
them; the stored conversation (`domain/responses.py`) and the stream renderer use both.)
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from kimiserve.domain.capabilities import Parameters
from kimiserve.domain.inference import Call
from kimiserve.domain.results import GenerationResult
from kimiserve.domain.types import (
    Constraint,
    GenerationRequest,
    MediaKind,
    Message,
    Sampling,
    ThinkingLevel,
    TokenLogprob,
    ToolCall,
    ToolChoice,
    ToolSpec,
    Usage,
)
from kimiserve.errors import InvalidRequest, UnsupportedFeature
from kimiserve.protocols.responses.errors import from_validation
from kimiserve.protocols.responses.models import ContentPart, InputItem, ResponsesRequest, TextFormat, Tool

log = logging.getLogger(__name__)

PROTOCOL = "responses"
JSON_OBJECT_SCHEMA = '{"type": "object"}'
HISTORY = "previous_response_id"  # how an error in the stored conversation is named

_EFFORT: dict[str, ThinkingLevel] = {
    "none": "none",
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "xhigh",
}
# OpenAI's hosted tools: this server runs none of them.
BUILTIN_TOOLS = frozenset(
    {
        "web_search",
        "web_search_preview",
        "web_search_2025_08_26",
        "web_search_preview_2025_03_11",
        "file_search",
        "computer",
        "computer_use",
        "computer_use_preview",
        "code_interpreter",
        "mcp",
        "image_generation",
        "local_shell",
        "shell",
        "apply_patch",
    }
)


def new_response_id() -> str:
    return "resp_" + secrets.token_hex(15)  # 35 characters: within the task store's 36


def item_id(prefix: str, response_id: str, index: int) -> str:
    return f"{prefix}_{response_id.removeprefix('resp_')}{index:02x}"


# ---- request ------------------------------------------------------------------------------


def parse(body: Any) -> ResponsesRequest:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    try:
        return ResponsesRequest.model_validate(body)
    except ValidationError as exc:
        raise from_validation(exc) from None


def _refuse_unsupported(req: ResponsesRequest) -> None:
    if req.background:
        raise UnsupportedFeature(
            "Background responses are not available on this server.", parameter="background"
        )
    if req.conversation is not None:
        raise UnsupportedFeature(
            "Conversations are not available on this server; use previous_response_id.",
            parameter="conversation",
        )
    if req.conversation is None and req.input is None and req.previous_response_id is None:
        raise InvalidRequest(
            "Missing required parameter: 'input'.", parameter="input", code="missing_required_parameter"
        )


def _text(parts: Sequence[ContentPart], where: str, allowed: tuple[str, ...]) -> str:
    texts: list[str] = []
    for j, part in enumerate(parts):
        if part.type not in allowed:
            raise InvalidRequest(
                f"{where}.content[{j}]: a part of type {part.type!r} is not allowed here "
                f"(expected {' or '.join(allowed)}).",
                parameter=f"{where}.content[{j}].type",
            )
        text = part.text if part.type != "refusal" else part.refusal
        if text is None:
            raise InvalidRequest(
                f"{where}.content[{j}] has no text.",
                parameter=f"{where}.content[{j}].text",
                code="missing_required_parameter",
            )
        texts.append(text)
    return "\n".join(texts)


@dataclass
class _Conversation:
    """Messages being built from items, and where each message's images came from."""

    messages: list[Message] = field(default_factory=list)
    image_params: dict[int, list[str]] = field(default_factory=dict)
    reasoning: str = ""  # a reasoning item's text, for the next assistant turn
    kept_reasoning: bool = False

    def add(self, message: Message, images: Sequence[str] = ()) -> None:
        if images:
            self.image_params[len(self.messages)] = list(images)
        self.messages.append(message)

    def assistant(self, content: str = "", calls: tuple[ToolCall, ...] = ()) -> None:
        last = self.messages[-1] if self.messages else None
        if calls and last is not None and last.role == "assistant" and not self.reasoning:
            self.messages[-1] = replace(last, tool_calls=(*last.tool_calls, *calls))
            return
        self.add(Message(role="assistant", content=content, tool_calls=calls, reasoning=self.reasoning))
        self.reasoning = ""


def _message(conv: _Conversation, item: InputItem, where: str) -> None:
    if item.role is None:
        raise InvalidRequest(
            f"{where} is a message without 'role'.",
            parameter=f"{where}.role",
            code="missing_required_parameter",
        )
    if item.content is None:
        raise InvalidRequest(
            f"{where} is a message without 'content'.",
            parameter=f"{where}.content",
            code="missing_required_parameter",
        )
    if item.role == "assistant":
        parts = item.content
        text = (
            parts if isinstance(parts, str) else _text(parts, where, ("output_text", "refusal", "input_text"))
        )
        conv.assistant(text)
        return
    if item.role in ("system", "developer"):
        parts = item.content
        text = parts if isinstance(parts, str) else _text(parts, where, ("input_text",))
        conv.add(Message(role="system", content=text))
        return
    if isinstance(item.content, str):
        conv.add(Message(role="user", content=item.content))
        return
    texts: list[ContentPart] = []
    images: list[str] = []
    params: list[str] = []
    for j, part in enumerate(item.content):
        if part.type != "input_image":
            texts.append(part)
            continue
        if part.image_url is None:
            name = f"{where}.content[{j}].file_id" if part.file_id else f"{where}.content[{j}].image_url"
            raise UnsupportedFeature(
                f"{where}.content[{j}]: images by file_id are not available on this server; send image_url.",
                parameter=name,
            )
        images.append(part.image_url)
        params.append(f"{where}.content[{j}]" if where != HISTORY else HISTORY)
    text = _text(texts, where, ("input_text",))
    conv.add(Message(role="user", content=text, images=tuple(images)), params)


def _item(conv: _Conversation, item: InputItem, where: str) -> None:
    kind = item.type
    if kind == "message":
        _message(conv, item, where)
    elif kind == "function_call":
        for name in ("call_id", "name"):
            if not getattr(item, name):
                raise InvalidRequest(
                    f"{where} is a function_call without '{name}'.",
                    parameter=f"{where}.{name}",
                    code="missing_required_parameter",
                )
        assert item.call_id is not None and item.name is not None
        conv.assistant(calls=(ToolCall(id=item.call_id, name=item.name, arguments=item.arguments or "{}"),))
    elif kind == "function_call_output":
        if not item.call_id:
            raise InvalidRequest(
                f"{where} is a function_call_output without 'call_id'.",
                parameter=f"{where}.call_id",
                code="missing_required_parameter",
            )
        output = item.output
        if output is None:
            raise InvalidRequest(
                f"{where} is a function_call_output without 'output'.",
                parameter=f"{where}.output",
                code="missing_required_parameter",
            )
        text = output if isinstance(output, str) else _text(output, where, ("input_text", "output_text"))
        conv.add(Message(role="tool", content=text, tool_call_id=item.call_id))
    elif kind == "reasoning":
        parts = item.content if isinstance(item.content, list) else []
        text = "".join(p.text or "" for p in parts) or "".join(p.text or "" for p in item.summary or [])
        if text:
            conv.reasoning += text
            conv.kept_reasoning = True
    else:
        raise UnsupportedFeature(
            f"{where}: input items of type {kind!r} are not available on this server.",
            parameter=f"{where}.type",
        )


def namespaces(req: ResponsesRequest) -> dict[str, str]:
    """Each function name declared inside a `namespace` tool (Codex's sub-agent tools), with its
    namespace: a call of it names the namespace, as OpenAI's function_call items do."""
    out: dict[str, str] = {}
    for tool in req.tools or []:
        if tool.type == "namespace" and tool.name is not None:
            for inner in (tool.model_extra or {}).get("tools") or []:
                if isinstance(inner, dict) and isinstance(inner.get("name"), str):
                    out[inner["name"]] = tool.name
    return out


def _flat_tools(req: ResponsesRequest) -> list[tuple[Tool, str]]:
    """Every tool with its parameter name, a namespace's functions in its place."""
    out: list[tuple[Tool, str]] = []
    for i, tool in enumerate(req.tools or []):
        if tool.type != "namespace":
            out.append((tool, f"tools[{i}]"))
            continue
        inner = (tool.model_extra or {}).get("tools")
        if not isinstance(inner, list):
            raise InvalidRequest(
                f"tools[{i}] is a namespace without 'tools'.",
                parameter=f"tools[{i}].tools",
                code="missing_required_parameter",
            )
        for j, value in enumerate(inner):
            try:
                out.append((Tool.model_validate(value), f"tools[{i}].tools[{j}]"))
            except ValidationError as exc:
                raise InvalidRequest(
                    f"tools[{i}].tools[{j}] is not a tool: {exc.errors(include_url=False)[0]['msg']}.",
                    parameter=f"tools[{i}].tools[{j}]",
                ) from None
    return out


def _tools(req: ResponsesRequest) -> tuple[tuple[ToolSpec, ...], list[str]]:
    specs: list[ToolSpec] = []
    names: list[str] = []
    for tool, where in _flat_tools(req):
        if tool.type != "function":
            if tool.type in BUILTIN_TOOLS:
                message = (
                    f"{where}: the built-in tool {tool.type!r} cannot run on this server; "
                    "declare a function tool instead."
                )
            else:
                message = f"{where}: tools of type {tool.type!r} are not available on this server."
            raise UnsupportedFeature(message, parameter=f"{where}.type")
        if tool.name is None:
            raise InvalidRequest(
                f"{where} is a function tool without 'name'.",
                parameter=f"{where}.name",
                code="missing_required_parameter",
            )
        specs.append(
            ToolSpec(
                name=tool.name,
                description=tool.description or "",
                parameters=json.dumps(tool.parameters or {"type": "object", "properties": {}}),
            )
        )
        names.append(f"{where}.name")
    return tuple(specs), names


def _tool_choice(req: ResponsesRequest) -> ToolChoice:
    choice = req.tool_choice
    if choice is None:
        return ToolChoice()
    if isinstance(choice, str):
        return ToolChoice(mode=choice)
    if choice.type != "function":
        raise UnsupportedFeature(
            f"tool_choice of type {choice.type!r} is not available on this server; "
            "use 'auto', 'none', 'required' or a function.",
            parameter="tool_choice.type",
        )
    if not choice.name:
        raise InvalidRequest(
            "tool_choice of type 'function' needs a 'name'.",
            parameter="tool_choice.name",
            code="missing_required_parameter",
        )
    return ToolChoice(mode="named", name=choice.name)


def _constraint(fmt: TextFormat | None) -> Constraint | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return Constraint(json_schema=JSON_OBJECT_SCHEMA)
    if fmt.schema_ is None:
        raise InvalidRequest(
            "text.format of type 'json_schema' needs a 'schema'.",
            parameter="text.format.schema",
            code="missing_required_parameter",
        )
    return Constraint(json_schema=json.dumps(fmt.schema_))


def input_items(req: ResponsesRequest, response_id: str) -> list[dict[str, Any]]:
    """This request's input as items (a string input is one user message), each with an id, as
    they are stored and listed."""
    raw: list[dict[str, Any]]
    if req.input is None:
        raw = []
    elif isinstance(req.input, str):
        raw = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": req.input}]}]
    else:
        raw = [item.model_dump(exclude_none=True, by_alias=True) for item in req.input]
    out = []
    for i, item in enumerate(raw):
        item.setdefault("type", "message")
        if item["type"] == "message" and isinstance(item.get("content"), str):
            kind = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": kind, "text": item["content"]}]
        item.setdefault("id", item_id("in", response_id, i))
        out.append(item)
    return out


def _items(values: Sequence[dict[str, Any]], where: str | None) -> list[tuple[InputItem, str]]:
    """Stored items, validated again (as the client sent them, so they are)."""
    out = []
    for i, value in enumerate(values):
        try:
            item = InputItem.model_validate(value)
        except ValidationError:
            raise InvalidRequest("The stored conversation cannot be read.", parameter=HISTORY) from None
        out.append((item, where or f"input[{i}]"))
    return out


def to_call(req: ResponsesRequest, response_id: str, context: Sequence[dict[str, Any]]) -> Call:
    """The request, after the stored conversation `context`, as the front door takes it."""
    _refuse_unsupported(req)
    conv = _Conversation()
    if req.instructions:
        conv.add(Message(role="system", content=req.instructions))
    for item, where in _items(context, HISTORY):
        _item(conv, item, where)
    own: list[tuple[InputItem, str]]
    if isinstance(req.input, str):
        own = [(InputItem(type="message", role="user", content=req.input), "input")]
    else:
        own = [(item, f"input[{i}]") for i, item in enumerate(req.input or [])]
    for item, where in own:
        _item(conv, item, where)
    if not conv.messages or all(m.role == "system" for m in conv.messages):
        raise InvalidRequest("The input has no message to answer.", parameter="input")
    tools, tool_names = _tools(req)
    effort = req.reasoning.effort if req.reasoning is not None else None
    fmt = req.text.format if req.text is not None else None
    request = GenerationRequest(
        model=req.model,
        messages=tuple(conv.messages),
        sampling=Sampling(
            temperature=req.temperature if req.temperature is not None else 1.0,
            top_p=req.top_p if req.top_p is not None else 1.0,
            max_tokens=req.max_output_tokens,
            logprobs=_logprobs(req),
        ),
        constraint=_constraint(fmt),
        thinking=_EFFORT[effort] if effort is not None else "none",
        tools=tools,
        tool_choice=_tool_choice(req),
        parallel_tool_calls=req.parallel_tool_calls is not False,
        prompt_cache_key=req.prompt_cache_key,
        keep_reasoning=conv.kept_reasoning,
    )
    return Call(
        model=req.model,
        request=request,
        protocol=PROTOCOL,
        parameters=_parameters(conv, tool_names),
        request_id=response_id,
    )


def _parameters(conv: _Conversation, tool_names: Sequence[str]) -> Parameters:
    images = conv.image_params

    def media_input(i: int, kind: MediaKind, k: int) -> str:
        return images[i][k]

    def media(i: int, kind: MediaKind, k: int) -> str:
        name = images[i][k]
        return name if name == HISTORY else f"{name}.image_url"

    return Parameters(
        thinking="reasoning.effort",
        tools="tools",
        tool_choice="tool_choice",
        media=media,
        media_input=media_input,
        tool_name=lambda i: tool_names[i],
    )


# ---- reply --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """What every rendering of one response shares: its id, creation time, and the request's
    settings echoed back."""

    id: str
    created_at: int
    echo: dict[str, Any]
    namespaces: dict[str, str] = field(default_factory=dict)  # function name → its namespace

    @classmethod
    def start(cls, response_id: str, req: ResponsesRequest) -> Reply:
        fmt = (
            req.text.format.model_dump(exclude_none=True, by_alias=True)
            if req.text and req.text.format
            else None
        )
        tool_choice = req.tool_choice
        echo: dict[str, Any] = {
            "model": req.model,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "parallel_tool_calls": req.parallel_tool_calls is not False,
            "previous_response_id": req.previous_response_id,
            "reasoning": {
                "effort": req.reasoning.effort if req.reasoning else None,
                "summary": req.reasoning.summary if req.reasoning else None,
            },
            "store": req.store is not False,
            "temperature": req.temperature if req.temperature is not None else 1.0,
            "text": {"format": fmt or {"type": "text"}},
            "tool_choice": (
                tool_choice
                if isinstance(tool_choice, str)
                else tool_choice.model_dump(exclude_none=True)
                if tool_choice is not None
                else "auto"
            ),
            "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
            "top_p": req.top_p if req.top_p is not None else 1.0,
            "truncation": req.truncation or "disabled",
            "user": req.user,
            "metadata": req.metadata or {},
        }
        return cls(response_id, int(time.time()), echo, namespaces(req))

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        *,
        error: dict[str, Any] | None = None,
        incomplete: str | None = None,
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "output": output,
            "usage": usage,
            **self.echo,
        }


def usage(u: Usage) -> dict[str, Any]:
    return {
        "input_tokens": u.prompt_tokens,
        # cache_write_tokens: the SDK's type requires it; no engine here bills a cache write
        "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


def status_of(finish_reason: str) -> tuple[str, str | None]:
    """(status, incomplete reason) for a finish reason."""
    if finish_reason == "length":
        return "incomplete", "max_output_tokens"
    if finish_reason == "content_filter":
        return "incomplete", "content_filter"
    return "completed", None


def reasoning_item(item: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if text else []
    return {"id": item, "type": "reasoning", "summary": [], "content": content, "status": status}


LOGPROBS = "message.output_text.logprobs"  # the `include` entry that asks for them


def _logprobs(req: ResponsesRequest) -> int | None:
    """Alternatives wanted per token when logprobs are asked (`include` names them, or
    `top_logprobs` is set, as OpenAI takes either), else None."""
    if LOGPROBS in (req.include or ()) or req.top_logprobs is not None:
        return req.top_logprobs or 0
    return None


def logprob_entries(entries: Sequence[TokenLogprob] | None) -> list[dict[str, Any]]:
    """Tokens as the Responses API shows them: `{token, bytes, logprob, top_logprobs}`."""

    def one(e: TokenLogprob) -> dict[str, Any]:
        return {"token": e.token, "bytes": list(e.token_bytes), "logprob": max(e.logprob, -9999.0)}

    return [{**one(e), "top_logprobs": [one(t) for t in e.top]} for e in entries or ()]


def output_text(text: str, logprobs: Sequence[TokenLogprob] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprob_entries(logprobs)}


def message_item(
    item: str, text: str | None, status: str = "completed", logprobs: Sequence[TokenLogprob] | None = None
) -> dict[str, Any]:
    content = [output_text(text, logprobs)] if text is not None else []
    return {"id": item, "type": "message", "role": "assistant", "status": status, "content": content}


def function_call_item(
    item: str,
    call: ToolCall,
    status: str = "completed",
    arguments: str | None = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    out = {
        "id": item,
        "type": "function_call",
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments if arguments is None else arguments,
        "status": status,
    }
    if namespace is not None:
        out["namespace"] = namespace
    return out


def output_items(reply: Reply, result: GenerationResult) -> list[dict[str, Any]]:
    """A finished generation's output: its reasoning, its text, then its calls."""
    out: list[dict[str, Any]] = []
    if result.reasoning:
        out.append(reasoning_item(item_id("rs", reply.id, len(out)), result.reasoning))
    if result.text or not result.tool_calls:
        out.append(message_item(item_id("msg", reply.id, len(out)), result.text, logprobs=result.logprobs))
    for call in result.tool_calls:
        namespace = reply.namespaces.get(call.name)
        out.append(function_call_item(item_id("fc", reply.id, len(out)), call, namespace=namespace))
    return out


def response(reply: Reply, result: GenerationResult) -> dict[str, Any]:
    status, incomplete = status_of(result.finish_reason)
    return reply.response(status, output_items(reply, result), usage(result.usage), incomplete=incomplete)
