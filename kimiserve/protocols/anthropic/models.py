"""The Anthropic Messages request, as pydantic models (the shapes of the `anthropic` SDK's
`MessageCreateParams` and `MessageCountTokensParams`).

Unknown fields are accepted and ignored, as Anthropic's API does with fields a model does not use
(`cache_control`, `citations`, `service_tier`, `container`, …). Content blocks are typed by their
`type`; a block type this server cannot honour (documents, server tools' results, …) parses as
`OtherBlock` so translate.py can refuse it by name. Bounds are Anthropic's: `temperature` and
`top_p` in [0, 1], `thinking.budget_tokens` at least 1024.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

MAX_STOP_SEQUENCES = 16  # as the OpenAI protocol: more than any agent sends
MIN_THINKING_BUDGET = 1024  # Anthropic's floor for `thinking.budget_tokens`


class _Open(BaseModel):
    """A wire object that accepts unknown fields (kept in `model_extra`, otherwise unused)."""

    model_config = ConfigDict(extra="allow")


class Base64Source(_Open):
    type: Literal["base64"]
    media_type: str
    data: str


class URLSource(_Open):
    type: Literal["url"]
    url: str


class OtherSource(_Open):
    type: str  # `file` (the Files API), `text`, `content`: refused by translate.py


def _source_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return {"base64": "Base64Source", "url": "URLSource"}.get(str(kind), "OtherSource")


ImageSource = Annotated[
    Annotated[Base64Source, Tag("Base64Source")]
    | Annotated[URLSource, Tag("URLSource")]
    | Annotated[OtherSource, Tag("OtherSource")],
    Discriminator(_source_tag),
]


class TextBlock(_Open):
    type: Literal["text"]
    text: str


class ImageBlock(_Open):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(_Open):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


class ToolResultBlock(_Open):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[TextBlock | ImageBlock] = ""
    is_error: bool = False


class ThinkingBlock(_Open):
    type: Literal["thinking"]
    thinking: str
    signature: str = ""


class RedactedThinkingBlock(_Open):
    type: Literal["redacted_thinking"]
    data: str


class OtherBlock(_Open):
    type: str


# Union tags are class names (capitalized), so an error's location can leave them out.
_BLOCK_TAGS = {
    "text": "TextBlock",
    "image": "ImageBlock",
    "tool_use": "ToolUseBlock",
    "tool_result": "ToolResultBlock",
    "thinking": "ThinkingBlock",
    "redacted_thinking": "RedactedThinkingBlock",
}


def _block_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return _BLOCK_TAGS.get(str(kind), "OtherBlock")


Block = Annotated[
    Annotated[TextBlock, Tag("TextBlock")]
    | Annotated[ImageBlock, Tag("ImageBlock")]
    | Annotated[ToolUseBlock, Tag("ToolUseBlock")]
    | Annotated[ToolResultBlock, Tag("ToolResultBlock")]
    | Annotated[ThinkingBlock, Tag("ThinkingBlock")]
    | Annotated[RedactedThinkingBlock, Tag("RedactedThinkingBlock")]
    | Annotated[OtherBlock, Tag("OtherBlock")],
    Discriminator(_block_tag),
]


class MessageParam(_Open):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class Tool(_Open):
    """A client tool. Anthropic's server and versioned tools (`bash_20250124`, `web_search_…`)
    carry a `type` other than `custom`: refused by translate.py, naming it."""

    name: str = Field(min_length=1, max_length=128)
    description: str = ""
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class ToolChoice(_Open):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(_Open):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(None, ge=MIN_THINKING_BUDGET)


class OutputFormat(_Open):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Open):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: OutputFormat | None = None


class Metadata(_Open):
    user_id: str | None = None


class CountTokensRequest(_Open):
    """POST /v1/messages/count_tokens: the request without the generation's settings."""

    model: str = Field(min_length=1)
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(CountTokensRequest):
    """POST /v1/messages."""

    max_tokens: int = Field(ge=1)
    stream: bool = False
    stop_sequences: list[str] | None = Field(None, max_length=MAX_STOP_SEQUENCES)
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    metadata: Metadata | None = None
