"""Anthropic wire ↔ domain: a Messages body → a `Call`; results → a `message` object.

Requests:
- `system` (a string or text blocks) is the first message; each wire message becomes one or
  more canonical messages: a user turn's `tool_result` blocks are tool messages (first, so they
  follow the assistant's calls), its text and images one user message; an assistant turn's
  `text`, `tool_use` and `thinking` blocks one assistant message (`thinking` → `reasoning`,
  which engines leave out of the prompt, as Anthropic ignores earlier turns' thinking;
  `redacted_thinking` is accepted and dropped: nothing here can read it). A tool result with
  `is_error` reaches the model prefixed "Error: ". Images in a tool result follow the tool
  messages as a user message's images.
- `thinking: {type: enabled, budget_tokens}` is an exact reasoning budget
  (`GenerationRequest.thinking_budget`, honoured by both engine kinds), under the level nearest
  to it; `adaptive` takes `output_config.effort`'s level (`max` → `xhigh`), else `high`.
- `tool_choice`: auto → auto, any → required, tool → named, none → none.
  `disable_parallel_tool_use: true` → `parallel_tool_calls` false (at most one call a turn).
- `output_config.format` (json_schema) is a JSON Schema constraint.
- A final assistant message (a prefill) is refused: the engines start a new assistant turn.

Replies: content blocks `thinking` (with an opaque `signature`: a digest of the thinking text,
not Anthropic's; signatures sent back are accepted and never checked), `text`, `tool_use`.
`stop_reason`: end_turn, max_tokens, tool_use, refusal (content filter). The engines report a
stop at a stop sequence as a plain stop, so it reads `end_turn` with `stop_sequence: null`.
Usage: `input_tokens` is the prompt less what the prefix cache served
(`cache_read_input_tokens`), as Anthropic counts them; `cache_creation_input_tokens` is 0.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kimiserve.domain.capabilities import Parameters
from kimiserve.domain.inference import Call
from kimiserve.domain.results import GenerationResult
from kimiserve.domain.served import ServedModels
from kimiserve.domain.types import (
    THINKING_BUDGETS,
    Constraint,
    FinishReason,
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
from kimiserve.errors import UnsupportedFeature
from kimiserve.protocols.anthropic.errors import WireParameter, from_validation
from kimiserve.protocols.anthropic.models import (
    Block,
    CountTokensRequest,
    ImageBlock,
    MessageParam,
    MessagesRequest,
    OtherSource,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    URLSource,
)

PROTOCOL = "anthropic"

R = TypeVar("R", bound=BaseModel)

_STOP: dict[str, str] = {"length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
_EFFORT: dict[str, ThinkingLevel] = {
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "xhigh",
    "max": "xhigh",
}
_CHOICE = {"auto": "auto", "any": "required", "none": "none"}


def parse(body: Any, model: type[R]) -> R:
    if not isinstance(body, dict):
        raise WireParameter("The request body must be a JSON object.")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise from_validation(exc) from None


def served_name(name: str, registry: ServedModels, model_map: Mapping[str, str]) -> str:
    """The client's model name, or the served name its first matching glob maps it to (served
    names always win, so a map never hides a model)."""
    if registry.knows(name):
        return name
    for pattern, target in model_map.items():
        if fnmatch.fnmatchcase(name, pattern):
            return target
    return name


# ---- request ------------------------------------------------------------------------------


@dataclass
class _Conversation:
    """Canonical messages as they are built, and where each image came from on the wire."""

    messages: list[Message] = field(default_factory=list)
    image_at: dict[tuple[int, int], str] = field(default_factory=dict)  # (message, k) → wire path

    def add(self, message: Message, image_paths: Sequence[str] = ()) -> None:
        for k, path in enumerate(image_paths):
            self.image_at[(len(self.messages), k)] = path
        self.messages.append(message)


def _image_ref(block: ImageBlock, where: str) -> str:
    source = block.source
    if isinstance(source, URLSource):
        return source.url
    if isinstance(source, OtherSource):
        raise UnsupportedFeature(
            f"Image sources of type {source.type!r} are not available on this server; send base64 or url.",
            parameter=f"{where}.source.type",
        )
    return f"data:{source.media_type};base64,{source.data}"


def _unsupported(block: Block, where: str, role: str) -> UnsupportedFeature:
    return UnsupportedFeature(
        f"Content blocks of type {block.type!r} are not available in {role} messages on this server.",
        parameter=f"{where}.type",
    )


def _tool_result(block: ToolResultBlock, where: str) -> tuple[str, list[tuple[str, str]]]:
    """A tool result's text (prefixed when it is an error) and its images with their paths."""
    if isinstance(block.content, str):
        text, images = block.content, []
    else:
        texts = [b.text for b in block.content if isinstance(b, TextBlock)]
        images = [
            (_image_ref(b, f"{where}.content.{k}"), f"{where}.content.{k}")
            for k, b in enumerate(block.content)
            if isinstance(b, ImageBlock)
        ]
        text = "\n".join(texts)
    return (f"Error: {text}" if block.is_error else text), images


def _user(conv: _Conversation, content: list[Block], i: int) -> None:
    texts: list[str] = []
    images: list[tuple[str, str]] = []
    for j, block in enumerate(content):
        where = f"messages.{i}.content.{j}"
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ImageBlock):
            images.append((_image_ref(block, where), where))
        elif isinstance(block, ToolResultBlock):
            text, more = _tool_result(block, where)
            conv.add(Message(role="tool", content=text, tool_call_id=block.tool_use_id))
            images += more
        else:
            raise _unsupported(block, where, "user")
    if texts or images:
        conv.add(
            Message(role="user", content="\n".join(texts), images=tuple(ref for ref, _ in images)),
            [path for _, path in images],
        )


def _assistant(conv: _Conversation, content: list[Block], i: int) -> None:
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    for j, block in enumerate(content):
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            calls.append(ToolCall(id=block.id, name=block.name, arguments=json.dumps(block.input)))
        elif isinstance(block, ThinkingBlock):
            reasoning.append(block.thinking)
        elif not isinstance(block, RedactedThinkingBlock):
            raise _unsupported(block, f"messages.{i}.content.{j}", "assistant")
    conv.add(
        Message(
            role="assistant", content="".join(texts), tool_calls=tuple(calls), reasoning="".join(reasoning)
        )
    )


def _conversation(wire: CountTokensRequest) -> _Conversation:
    conv = _Conversation()
    if wire.system is not None:
        system = wire.system if isinstance(wire.system, str) else "\n".join(b.text for b in wire.system)
        if system:
            conv.add(Message(role="system", content=system))
    for i, m in enumerate(wire.messages):
        content: list[Block] = (
            [TextBlock(type="text", text=m.content)] if isinstance(m.content, str) else m.content
        )
        if m.role == "user":
            _user(conv, content, i)
        else:
            _assistant(conv, content, i)
    return conv


def _refuse_prefill(messages: Sequence[MessageParam]) -> None:
    if messages[-1].role == "assistant":
        raise WireParameter(
            f"messages.{len(messages) - 1}: the last message must be a user message; "
            "this server does not continue an assistant prefill.",
            parameter=f"messages.{len(messages) - 1}.role",
        )


def nearest_level(budget: int) -> ThinkingLevel:
    """The thinking level whose budget is nearest `budget` (on a log scale)."""
    levels = [level for level in THINKING_BUDGETS if level != "none"]
    return min(levels, key=lambda level: abs(math.log(THINKING_BUDGETS[level] / budget)))


def _thinking(wire: CountTokensRequest, max_tokens: int | None) -> tuple[ThinkingLevel, int | None]:
    config = wire.thinking
    if config is None or config.type == "disabled":
        return "none", None
    if config.type == "adaptive":
        effort = wire.output_config.effort if wire.output_config else None
        return (_EFFORT[effort] if effort else "high"), None
    if config.budget_tokens is None:
        raise WireParameter("thinking.budget_tokens: Field required", parameter="thinking.budget_tokens")
    if max_tokens is not None and config.budget_tokens >= max_tokens:
        raise WireParameter(
            "max_tokens must be greater than thinking.budget_tokens.", parameter="thinking.budget_tokens"
        )
    return nearest_level(config.budget_tokens), config.budget_tokens


def _tools(wire: CountTokensRequest) -> tuple[tuple[ToolSpec, ...], ToolChoice]:
    specs: list[ToolSpec] = []
    for i, tool in enumerate(wire.tools or ()):
        if tool.type not in (None, "custom"):
            raise UnsupportedFeature(
                f"Tools of type {tool.type!r} (Anthropic's own) are not available on this server; "
                "declare a custom tool with an input_schema.",
                parameter=f"tools.{i}.type",
            )
        if tool.input_schema is None:
            raise WireParameter(
                f"tools.{i}.input_schema: Field required", parameter=f"tools.{i}.input_schema"
            )
        specs.append(ToolSpec(tool.name, tool.description, json.dumps(tool.input_schema)))
    choice = wire.tool_choice
    if choice is None:
        return tuple(specs), ToolChoice()
    if choice.type == "tool":
        if not choice.name:
            raise WireParameter("tool_choice.name: Field required", parameter="tool_choice.name")
        return tuple(specs), ToolChoice(mode="named", name=choice.name)
    return tuple(specs), ToolChoice(mode=_CHOICE[choice.type])  # type: ignore[arg-type]


def _constraint(wire: CountTokensRequest) -> Constraint | None:
    fmt = wire.output_config.format if wire.output_config else None
    return Constraint(json_schema=json.dumps(fmt.schema_)) if fmt is not None else None


def to_call(wire: CountTokensRequest, model: str, request_id: str) -> Call:
    """The request as the front door takes it; `model` is the served name (`served_name`)."""
    _refuse_prefill(wire.messages)
    conv = _conversation(wire)
    full = wire if isinstance(wire, MessagesRequest) else None
    thinking, budget = _thinking(wire, full.max_tokens if full else None)
    tools, tool_choice = _tools(wire)
    sampling = Sampling()
    if full is not None:
        sampling = Sampling(
            temperature=full.temperature if full.temperature is not None else 1.0,
            top_p=full.top_p if full.top_p is not None else 1.0,
            top_k=full.top_k or 0,
            max_tokens=full.max_tokens,
            stop=tuple(s for s in full.stop_sequences or () if s),
        )
    request = GenerationRequest(
        model=model,
        messages=tuple(conv.messages),
        sampling=sampling,
        constraint=_constraint(wire),
        thinking=thinking,
        thinking_budget=budget,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=not (wire.tool_choice is not None and wire.tool_choice.disable_parallel_tool_use),
    )
    return Call(
        model=model,
        request=request,
        protocol=PROTOCOL,
        parameters=_parameters(conv),
        request_id=request_id,
    )


def _parameters(conv: _Conversation) -> Parameters:
    def media(i: int, kind: MediaKind, k: int) -> str:
        return conv.image_at.get((i, k), "messages")

    return Parameters(
        thinking="thinking",
        tools="tools",
        tool_choice="tool_choice",
        media=media,
        tool_name=lambda i: f"tools.{i}.name",
    )


# ---- reply --------------------------------------------------------------------------------


def message_id(request_id: str) -> str:
    """One id scheme: `msg_<the request id's hex>`, beside the `request-id` header."""
    return "msg_" + request_id.removeprefix("req_")


def signature(thinking: str) -> str:
    """An opaque token for a thinking block: a digest of its text (see the module docstring)."""
    return base64.b64encode(hashlib.sha256(thinking.encode("utf-8", "replace")).digest()).decode()


def stop_reason(reason: FinishReason) -> str:
    return _STOP.get(reason, "end_turn")


def usage(u: Usage | None) -> dict[str, int]:
    if u is None:
        return {
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
    return {
        "input_tokens": max(u.prompt_tokens - u.cached_tokens, 0),
        "output_tokens": u.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": u.cached_tokens,
    }


def tool_input(call: ToolCall) -> Any:
    """A call's arguments as the object Anthropic's `input` is (engines hand over valid JSON)."""
    try:
        return json.loads(call.arguments) if call.arguments else {}
    except json.JSONDecodeError:
        return {}


def message(message_id: str, model: str, result: GenerationResult) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if result.reasoning:
        content.append(
            {"type": "thinking", "thinking": result.reasoning, "signature": signature(result.reasoning)}
        )
    if result.text:
        content.append({"type": "text", "text": result.text})
    for call in result.tool_calls:
        content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": tool_input(call)})
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(result.finish_reason),
        "stop_sequence": None,
        "usage": usage(result.usage),
    }
