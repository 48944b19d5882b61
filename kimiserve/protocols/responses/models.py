"""The Responses API request (`POST /v1/responses`), as pydantic models shaped after the `openai`
SDK's `types/responses` (`ResponseCreateParams`, `ResponseInputItemParam`, `ToolParam`).

Unknown fields are accepted and ignored the way OpenAI does. Input items and tools are loose
objects (`type` plus whatever that type carries): translate.py reads each by its `type`, so a
refusal names the exact item (`input[3]`, `tools[1]`) and an item type this server does not know
is refused there by name, not as a pydantic union error.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_METADATA_KEYS = 16  # OpenAI: 16 pairs, keys up to 64 characters, values up to 512


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class InputImage(_Open):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class ContentPart(_Open):
    """One part of a message's content: `input_text`, `output_text`, `input_image`, `refusal`, …"""

    type: str
    text: str | None = None
    refusal: str | None = None
    image_url: str | None = None
    file_id: str | None = None


class InputItem(_Open):
    """A message (`type` "message" or absent, with `role`), `function_call`,
    `function_call_output`, `reasoning`, or another item type (refused by translate.py)."""

    type: str = "message"
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[ContentPart] | None = None
    # function_call
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    # function_call_output
    output: str | list[ContentPart] | None = None
    # reasoning
    summary: list[ContentPart] | None = None
    encrypted_content: str | None = None
    id: str | None = None
    status: str | None = None


class Tool(_Open):
    """A function tool (`type` "function"); other types are refused by name in translate.py."""

    type: str
    name: str | None = Field(None, pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceObject(_Open):
    type: str
    name: str | None = None


class TextFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class TextConfig(_Open):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class Reasoning(_Open):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class ResponsesRequest(_Open):
    model: str
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceObject | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    reasoning: Reasoning | None = None
    text: TextConfig | None = None
    stream: bool | None = None
    store: bool | None = None
    previous_response_id: str | None = Field(None, max_length=64)
    metadata: dict[str, str] | None = Field(None, max_length=MAX_METADATA_KEYS)
    prompt_cache_key: str | None = None
    user: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    include: list[str] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_tool_calls: int | None = Field(None, ge=1)
