"""GenerationRequest → an OpenAI chat-completions body, in the upstream's dialect.

The Kimi quirks live here, not in a protocol module:
- thinking on/off: `chat_template_kwargs: {"thinking": bool}` (vLLM, SGLang) or
  `thinking: {"type": "enabled" | "disabled"}` (Moonshot's API);
- tool-call ids in history renamed `functions.{name}:{idx}` (Moonshot's K2 Vendor Verifier: ids of
  another shape break the chat template's parsing), tool results renamed with them;
- `parallel_tool_calls` sent to vLLM, SGLang and plain OpenAI-compatible servers (their
  chat-completions request takes it; vLLM keeps only the first call when it is false); not to
  Moonshot's API, not known here to take it (the engine holds a turn to one call either way);
- `cache_salt` (vLLM) = the request's cache scope, so one account's prefix cache is never
  another's; `prompt_cache_key` forwarded;
- an assistant turn's reasoning (`Message.reasoning`): with `keep_reasoning`, sent back as
  `reasoning_content` (SGLang, Moonshot, llama-server) or as both `reasoning` and
  `reasoning_content` (vLLM reads either: `_parse_chat_message_content`), and the chat template
  told `preserve_thinking: true` (vLLM, SGLang; Kimi K2.6's template drops earlier turns'
  reasoning otherwise) or Moonshot `thinking.keep: "all"`; without it, dropped. Moonshot with
  thinking on answers 400 "thinking is enabled but reasoning_content is missing in assistant tool
  call message" (opencode issue 29690): there every assistant tool-call turn carries its
  `reasoning_content`, kept or not, `""` when the client sent none (as openclaw PR 74846 does);
- a user message's images and videos (data URIs, resolved by kimiserve through the SSRF-safe
  fetcher) as `image_url` / `video_url` content parts after its text, the parts vLLM and SGLang
  take for Kimi K2.6 and Moonshot's API documents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from kimiserve.domain.types import GenerationRequest, Message
from kimiserve.engines.openai_compat.config import Dialect, UpstreamConfig


def kimi_id(name: str, index: int) -> str:
    return f"functions.{name}:{index}"


@dataclass
class IdMap:
    """Client tool-call ids ↔ the `functions.name:idx` ids sent upstream."""

    upstream: dict[str, str] = field(default_factory=dict)  # client id → upstream id
    client: dict[str, str] = field(default_factory=dict)  # upstream id → client id
    count: int = 0  # tool calls so far in the conversation: the next call's index

    def add(self, client_id: str, name: str) -> str:
        wire = kimi_id(name, self.count)
        self.count += 1
        self.upstream[client_id] = wire
        self.client[wire] = client_id
        return wire


def _content(message: Message) -> str | list[dict[str, Any]]:
    if not (message.images or message.videos):
        return message.content
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}] if message.content else []
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in message.images]
    parts += [{"type": "video_url", "video_url": {"url": url}} for url in message.videos]
    return parts


@dataclass(frozen=True)
class _Reasoning:
    """Which reasoning fields an assistant turn carries upstream."""

    names: tuple[str, ...]  # the fields, in the upstream's dialect
    keep: bool  # every turn's reasoning, when there is one
    tool_turns: bool  # every tool-call turn, "" when there is none (Moonshot, thinking on)

    @classmethod
    def of(cls, request: GenerationRequest, dialect: Dialect) -> _Reasoning:
        names = ("reasoning", "reasoning_content") if dialect == "vllm" else ("reasoning_content",)
        moonshot_thinking = dialect == "moonshot" and request.thinking != "none"
        return cls(names, request.keep_reasoning, moonshot_thinking)

    def fields(self, message: Message) -> dict[str, str]:
        if message.role != "assistant":
            return {}
        if (self.keep and message.reasoning) or (self.tool_turns and message.tool_calls):
            return dict.fromkeys(self.names, message.reasoning)
        return {}


def _message(message: Message, ids: IdMap, normalise: bool, reasoning: _Reasoning) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": _content(message)}
    out.update(reasoning.fields(message))
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": ids.add(c.id, c.name) if normalise else c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in message.tool_calls
        ]
        if not message.content:
            out["content"] = None
    if message.tool_call_id is not None:
        out["tool_call_id"] = ids.upstream.get(message.tool_call_id, message.tool_call_id)
    return out


def messages(
    request: GenerationRequest, normalise: bool, dialect: Dialect = "openai"
) -> tuple[list[dict[str, Any]], IdMap]:
    ids = IdMap()
    reasoning = _Reasoning.of(request, dialect)
    return [_message(m, ids, normalise, reasoning) for m in request.messages], ids


def _tools(request: GenerationRequest) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": json.loads(t.parameters or "{}"),
            },
        }
        for t in request.tools
    ]


def _tool_choice(request: GenerationRequest) -> str | dict[str, Any]:
    choice = request.tool_choice
    if choice.mode == "named" and choice.name:
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode if choice.mode != "named" else "auto"


def build_body(request: GenerationRequest, config: UpstreamConfig) -> tuple[dict[str, Any], IdMap]:
    """The body to POST, and the id map to translate the answer's ids back."""
    dialect = config.dialect
    wire_messages, ids = messages(request, normalise=dialect != "openai", dialect=dialect)
    s = request.sampling
    body: dict[str, Any] = {
        "model": config.model,
        "messages": wire_messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "seed": s.seed,
    }
    if dialect != "moonshot":
        # Moonshot's hosted API locks temperature, top_p and the penalties for K2.6 (KIMI_K2.md).
        body["temperature"] = s.temperature
        body["top_p"] = s.top_p
        if s.frequency_penalty:
            body["frequency_penalty"] = s.frequency_penalty
        if s.presence_penalty:
            body["presence_penalty"] = s.presence_penalty
    if s.max_tokens is not None:
        body["max_tokens"] = s.max_tokens
    if s.stop:
        body["stop"] = list(s.stop)
    if dialect in ("vllm", "sglang", "openai"):
        # Sampler extensions vLLM, SGLang and llama-server take; hosted APIs reject or lock them.
        if s.top_k:
            body["top_k"] = s.top_k
        if s.min_p:
            body["min_p"] = s.min_p
        if s.repetition_penalty != 1.0:
            body["repetition_penalty"] = s.repetition_penalty
    if request.constraint is not None and request.constraint.json_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": json.loads(request.constraint.json_schema)},
        }
    if request.tools:
        body["tools"] = _tools(request)
        body["tool_choice"] = _tool_choice(request)
        if dialect != "moonshot":
            body["parallel_tool_calls"] = request.parallel_tool_calls
    thinking = request.thinking != "none"
    if dialect in ("vllm", "sglang"):
        body["chat_template_kwargs"] = {"thinking": thinking}
        if request.keep_reasoning:
            body["chat_template_kwargs"]["preserve_thinking"] = True
    elif dialect == "moonshot":
        body["thinking"] = {"type": "enabled" if thinking else "disabled"}
        if thinking and request.keep_reasoning:
            body["thinking"]["keep"] = "all"
    if request.prompt_cache_key is not None:
        body["prompt_cache_key"] = request.prompt_cache_key
    if dialect == "vllm" and request.cache_scope:
        body["cache_salt"] = request.cache_scope
    return body, ids
