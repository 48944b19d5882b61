"""OpenAI wire ↔ domain: a chat-completions body → GenerationRequest; results → the reply shapes.

What needs the served model (vision, thinking, tools) is checked by the front door
(`domain/capabilities.py`), with the parameters named here (`parameters`), so every refusal
names the exact parameter the client sent.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kimiserve.domain.capabilities import Parameters
from kimiserve.domain.inference import Call
from kimiserve.domain.results import GenerationResult
from kimiserve.domain.served import ServedModel
from kimiserve.domain.types import (
    Constraint,
    GenerationRequest,
    MediaKind,
    Message,
    Sampling,
    ThinkingLevel,
    ToolCall,
    ToolChoice,
    ToolSpec,
    Usage,
)
from kimiserve.errors import InvalidRequest, UnsupportedFeature
from kimiserve.protocols.openai.errors import from_validation
from kimiserve.protocols.openai.models import ChatCompletionRequest, ChatMessage, ContentPart, ResponseFormat

log = logging.getLogger(__name__)

PROTOCOL = "openai"
JSON_OBJECT_SCHEMA = '{"type": "object"}'

_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter"}
_EFFORT: dict[str, ThinkingLevel] = {
    "none": "none",
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "xhigh",
}


# ---- request ------------------------------------------------------------------------------


def parse(body: Any) -> ChatCompletionRequest:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    try:
        chat = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise from_validation(exc) from None
    ignored = chat.ignored_fields()
    if ignored:
        log.debug("ignoring unknown fields: %s", ", ".join(ignored))
    return chat


def param_names(chat: ChatCompletionRequest) -> dict[str, str]:
    """Per-request overrides of errors.PARAMETERS: name the token limit the client used."""
    if chat.max_completion_tokens is None and chat.max_tokens is not None:
        return {"max_tokens": "max_tokens"}
    return {}


def _text_of(message: ChatMessage, i: int) -> tuple[str, list[str], list[str]]:
    """A message's text, and the image and video URLs of its parts."""
    if message.content is None:
        if message.role == "assistant":
            return "", [], []
        raise InvalidRequest(
            f"messages[{i}].content is required for a {message.role} message.",
            parameter=f"messages[{i}].content",
            code="missing_required_parameter",
        )
    if isinstance(message.content, str):
        return message.content, [], []
    texts: list[str] = []
    images: list[str] = []
    videos: list[str] = []
    for j, part in enumerate(message.content):
        where = f"messages[{i}].content[{j}]"
        if part.type == "text":
            if part.text is None:
                raise InvalidRequest(f"{where} is a text part without 'text'.", parameter=f"{where}.text")
            texts.append(part.text)
            continue
        kind = part.type.removesuffix("_url")  # image | video
        url = part.image_url if part.type == "image_url" else part.video_url
        if message.role != "user":
            raise InvalidRequest(
                f"{where}: only user messages may contain {part.type} parts.", parameter=where
            )
        if url is None:
            raise InvalidRequest(f"{where} has no '{part.type}' object.", parameter=f"{where}.{part.type}")
        (images if kind == "image" else videos).append(url.url)
    return "\n".join(texts), images, videos


def _messages(chat: ChatCompletionRequest) -> list[Message]:
    out: list[Message] = []
    for i, m in enumerate(chat.messages):
        text, images, videos = _text_of(m, i)
        if m.role == "tool":
            if not m.tool_call_id:
                raise InvalidRequest(
                    f"messages[{i}] is a tool message without 'tool_call_id'.",
                    parameter=f"messages[{i}].tool_call_id",
                    code="missing_required_parameter",
                )
            out.append(Message(role="tool", content=text, tool_call_id=m.tool_call_id))
        elif m.role == "assistant":
            calls = tuple(
                ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
                for c in m.tool_calls or ()
            )
            reasoning = m.reasoning_content or m.reasoning or ""
            out.append(Message(role="assistant", content=text, tool_calls=calls, reasoning=reasoning))
        else:
            out.append(
                Message(
                    role="system" if m.role == "developer" else m.role,
                    content=text,
                    images=tuple(images),
                    videos=tuple(videos),
                )
            )
    return out


def media_parameter(chat: ChatCompletionRequest) -> Callable[[int, MediaKind, int], str]:
    """Names the k-th image (or video) of message i as the client sent it:
    `messages[i].content[j].image_url.url`."""

    def parameter(i: int, kind: MediaKind, k: int) -> str:
        content = chat.messages[i].content
        parts = [
            j for j, p in enumerate(content or []) if isinstance(p, ContentPart) and p.type == f"{kind}_url"
        ]
        return f"messages[{i}].content[{parts[k]}].{kind}_url.url"

    return parameter


def _thinking(chat: ChatCompletionRequest) -> ThinkingLevel:
    effort = chat.reasoning_effort
    if chat.thinking is not None and chat.thinking.type == "disabled":
        if effort not in (None, "none"):
            raise InvalidRequest(
                "reasoning_effort asks for thinking, but thinking.type is 'disabled'.",
                parameter="reasoning_effort",
            )
        return "none"
    enabled = chat.thinking is not None  # type "enabled"
    return _EFFORT[effort] if effort is not None else ("high" if enabled else "none")


def _tools(chat: ChatCompletionRequest) -> tuple[tuple[ToolSpec, ...], ToolChoice]:
    specs = tuple(
        ToolSpec(
            name=t.function.name,
            description=t.function.description or "",
            parameters=json.dumps(t.function.parameters or {"type": "object", "properties": {}}),
        )
        for t in chat.tools or []
    )
    choice = chat.tool_choice
    if choice is None:
        return specs, ToolChoice()
    if isinstance(choice, str):
        return specs, ToolChoice(mode=choice)
    return specs, ToolChoice(mode="named", name=choice.function.name)


def parameters(chat: ChatCompletionRequest) -> Parameters:
    """How this request names what the front door checks."""

    def part(i: int, kind: MediaKind, k: int) -> str:
        content = chat.messages[i].content
        parts = [
            j for j, p in enumerate(content or []) if isinstance(p, ContentPart) and p.type == f"{kind}_url"
        ]
        return f"messages[{i}].content[{parts[k]}]"

    enabled = chat.thinking is not None and chat.thinking.type == "enabled"
    return Parameters(
        thinking="thinking" if enabled or chat.reasoning_effort is None else "reasoning_effort",
        tools="tools",
        tool_choice="tool_choice",
        media=media_parameter(chat),
        media_input=part,
        tool_name=lambda i: f"tools[{i}].function.name",
    )


def _constraint(fmt: ResponseFormat | None) -> Constraint | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return Constraint(json_schema=JSON_OBJECT_SCHEMA)
    if fmt.json_schema is None:
        raise InvalidRequest(
            "response_format of type 'json_schema' needs a 'json_schema' object.",
            parameter="response_format.json_schema",
            code="missing_required_parameter",
        )
    schema = fmt.json_schema.schema_
    return Constraint(json_schema=json.dumps(schema) if schema is not None else JSON_OBJECT_SCHEMA)


def _refuse_unsupported(chat: ChatCompletionRequest) -> None:
    if chat.stream_options is not None and not chat.stream:
        raise InvalidRequest(
            "stream_options is only allowed when stream is true.", parameter="stream_options"
        )
    if chat.logprobs:
        raise UnsupportedFeature("logprobs are not available on this server.", parameter="logprobs")


def to_call(chat: ChatCompletionRequest, request_id: str) -> Call:
    """The chat request as the front door takes it."""
    return Call(
        model=chat.model,
        request=to_generation_request(chat),
        protocol=PROTOCOL,
        parameters=parameters(chat),
        n=chat.n or 1,
        seed=chat.seed,
        request_id=request_id,
    )


def to_generation_request(chat: ChatCompletionRequest) -> GenerationRequest:
    _refuse_unsupported(chat)
    messages = _messages(chat)
    thinking = _thinking(chat)
    tools, tool_choice = _tools(chat)
    stop = [chat.stop] if isinstance(chat.stop, str) else chat.stop or []
    top_k = chat.top_k if chat.top_k is not None else 0
    sampling = Sampling(
        temperature=chat.temperature if chat.temperature is not None else 1.0,
        top_p=chat.top_p if chat.top_p is not None else 1.0,
        top_k=max(top_k, 0),  # vLLM's -1 and 0 both mean "off"
        min_p=chat.min_p or 0.0,
        frequency_penalty=chat.frequency_penalty or 0.0,
        presence_penalty=chat.presence_penalty or 0.0,
        repetition_penalty=chat.repetition_penalty if chat.repetition_penalty is not None else 1.0,
        max_tokens=chat.max_completion_tokens if chat.max_completion_tokens is not None else chat.max_tokens,
        stop=tuple(s for s in stop if s),
        ignore_eos=bool(chat.ignore_eos),
    )
    return GenerationRequest(
        model=chat.model,
        messages=tuple(messages),
        sampling=sampling,
        constraint=_constraint(chat.response_format),
        thinking=thinking,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=chat.parallel_tool_calls is not False,
        prompt_cache_key=chat.prompt_cache_key,
        # Seed 004: `keep: "all"` preserves earlier turns' reasoning_content; without it, dropped.
        keep_reasoning=chat.thinking is not None and chat.thinking.keep == "all",
    )


# ---- reply --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """What every object of one reply shares: its id, creation time and the model name echoed."""

    id: str
    model: str
    created: int

    @classmethod
    def start(cls, request_id: str, model: str) -> Reply:
        return cls(request_id, model, int(time.time()))


def finish_reason(reason: str) -> str:
    return _FINISH.get(reason, "stop")


def tool_call(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def tool_call_deltas(call: ToolCall, index: int) -> list[dict[str, Any]]:
    """A call as OpenAI streams it: index, id, type and name (arguments "") in its first delta,
    then the arguments (here in one piece: engines hand over whole, validated calls)."""
    function = {"name": call.name, "arguments": ""}
    head = {"index": index, "id": call.id, "type": "function", "function": function}
    if not call.arguments:
        return [head]
    return [head, {"index": index, "function": {"arguments": call.arguments}}]


def usage(usages: Sequence[Usage]) -> dict[str, Any]:
    """One usage object for all the choices: the sum of their generations."""
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(u.cached_tokens for u in usages)},
        "completion_tokens_details": {"reasoning_tokens": sum(u.reasoning_tokens for u in usages)},
    }


def completion(reply: Reply, results: Sequence[GenerationResult]) -> dict[str, Any]:
    choices = []
    for index, r in enumerate(results):
        # As OpenAI: a message that only calls tools has `content: null`.
        content = r.text if r.text or not r.tool_calls else None
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if r.reasoning:
            message["reasoning_content"] = r.reasoning
        if r.tool_calls:
            message["tool_calls"] = [tool_call(c) for c in r.tool_calls]
        choices.append(
            {
                "index": index,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason(r.finish_reason),
            }
        )
    return {
        "id": reply.id,
        "object": "chat.completion",
        "created": reply.created,
        "model": reply.model,
        "choices": choices,
        "usage": usage([r.usage for r in results]),
    }


def chunk(
    reply: Reply,
    index: int,
    delta: dict[str, Any],
    finish: str | None = None,
    *,
    with_usage: bool = False,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": reply.id,
        "object": "chat.completion.chunk",
        "created": reply.created,
        "model": reply.model,
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if with_usage:
        out["usage"] = None  # as OpenAI: present on every chunk once include_usage is asked
    return out


def usage_chunk(reply: Reply, usages: Sequence[Usage]) -> dict[str, Any]:
    return {
        "id": reply.id,
        "object": "chat.completion.chunk",
        "created": reply.created,
        "model": reply.model,
        "choices": [],
        "usage": usage(usages),
    }


# ---- models -------------------------------------------------------------------------------


def model_entries(model: ServedModel, created: int) -> list[dict[str, Any]]:
    """One /v1/models entry per name a served model answers to; a stand-in says so."""
    out = []
    for name in model.names:
        entry: dict[str, Any] = {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": model.owned_by,
            "root": model.id,
            "max_model_len": model.engine.capabilities.context_length,
        }
        if model.served_by:
            entry["stand_in_for"] = model.served_by
            entry["description"] = (
                f"Local stand-in: requests for {model.id} are answered by {model.served_by}."
            )
        out.append(entry)
    return out
