"""The OpenAI chat-completions request, as pydantic models (the protocol, like vLLM's protocol.py).

Shaped after OpenAI's API and the Kimi K2.6 resellers' (thinking {type, keep},
`reasoning_content`), plus vLLM's sampler extras (top_k, min_p, repetition_penalty, ignore_eos).
Unknown fields are accepted and ignored the way OpenAI does; `ignored_fields` names them for
the debug log. Bounds are OpenAI's; rules that depend on the served model or on several
fields together live in translate.py, where they can name the exact offending parameter.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_STOP_SEQUENCES = 16  # OpenAI allows 4; Runware 16: accept what either client sends
MAX_CHOICES = 4


class _Open(BaseModel):
    """A wire object that accepts unknown fields (kept in `model_extra`, otherwise unused)."""

    model_config = ConfigDict(extra="allow")


class ImageURL(_Open):
    url: str
    detail: str | None = None


class VideoURL(_Open):
    url: str


class ContentPart(_Open):
    type: Literal["text", "image_url", "video_url"]
    text: str | None = None
    image_url: ImageURL | None = None
    video_url: VideoURL | None = None


class FunctionCall(_Open):
    name: str
    arguments: str = "{}"


class ToolCallIn(_Open):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None  # Kimi: earlier turns' thinking (dropped unless kept)
    reasoning: str | None = None  # the same, under vLLM's name (vllm PR 27752)


class FunctionDef(_Open):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Open):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Open):
    name: str


class NamedToolChoice(_Open):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Open):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str | None = Field(None, pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class Thinking(_Open):
    type: Literal["enabled", "disabled"] = "enabled"
    keep: Literal["all"] | None = None


class StreamOptions(_Open):
    include_usage: bool | None = None


class ChatCompletionRequest(_Open):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = Field(None, max_length=MAX_STOP_SEQUENCES)
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    thinking: Thinking | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    # None or true: several calls in one turn allowed (GenerationRequest.parallel_tool_calls).
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    prompt_cache_key: str | None = None
    user: str | None = None
    # vLLM sampler extras
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    ignore_eos: bool | None = None

    def ignored_fields(self) -> list[str]:
        """Dotted paths of the unknown fields this request carried (for the debug log)."""
        found = sorted(self.model_extra or {})
        for i, message in enumerate(self.messages):
            found += [f"messages[{i}].{k}" for k in sorted(message.model_extra or {})]
        return found
