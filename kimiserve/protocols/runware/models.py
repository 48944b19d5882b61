"""Runware wire models: the task objects a client may send, as strict as seed 000 is.

Every model forbids unknown fields, takes JSON types only (no "1" for 1, no true for 1), and
refuses an explicit `null` where the seed names a type. A whole number written as a float
(`8.0`) is an integer, as in JSON Schema. Bounds, enums and formats are the seed's.
Beyond the seed, the forms the official SDK (runware 0.5.24) sends are accepted:

- tool-call history: `{"role":"assistant","tools":[{"id","name","input"}]}` without `content`,
  and tool results `{"role":"tool","id":…,"content":…}`;
- `inputs.documents` and `providerSettings` (an object, passed through unread here).

Conditional rules the field types cannot carry (role-dependent message shapes, `name` and
`schema` required for function tools, `toolChoice.name` for type "tool") are checked in
validators that raise `PydanticCustomError` with a `field` in the context: `validation.py`
appends that field to the error's location, so the parameter names the field itself.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

# The seed's literal maximum; larger than 2**63 - 1, which engines must clamp to themselves.
SEED_MAX = 9223372036854776000
SYSTEM_PROMPT_MAX = 50_000
MAX_TOKENS_MAX = 1_000_000
STOP_SEQUENCES_MAX = 16
TOOL_NAME_MAX = 64

# Error types raised here, read by validation.py.
MISSING = "kimiserve_missing"  # a conditionally required field is absent
UNSUPPORTED = "kimiserve_unsupported"  # a known field where this shape does not allow it
NULL = "kimiserve_null"  # an explicit null

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# RFC 3986 absolute URI: a scheme, then only URI characters, percent-escapes well formed.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
_DATA_IMAGE = re.compile(r"data:image/[a-zA-Z]+;base64,[a-zA-Z0-9+/=]+")
_BASE64 = re.compile(r"[a-zA-Z0-9+/=]+")


def is_uuid(value: str) -> bool:
    """An RFC 4122 UUID in its textual 8-4-4-4-12 form, any version, either case."""
    return _UUID.fullmatch(value) is not None


def is_uri(value: str) -> bool:
    return _URI.fullmatch(value) is not None


# ---- field checks -------------------------------------------------------------------------


def _uuid(value: str) -> str:
    if not is_uuid(value):
        raise PydanticCustomError(
            "uuid_format", "must be a UUID such as 123e4567-e89b-12d3-a456-426614174000"
        )
    return value


def _whole(value: Any) -> Any:
    """JSON has one number type: 8.0 is the integer 8 (as JSON Schema's `integer` says)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


def _hundredths(value: float) -> float:
    """multipleOf 0.01, tolerant of binary floating point (0.07 * 100 is 7.000000000000001)."""
    scaled = value * 100
    if abs(round(scaled) - scaled) >= 1e-6:
        raise PydanticCustomError("multiple_of", "must be a multiple of 0.01", {"multiple_of": 0.01})
    return value


def _image(value: str) -> str:
    if is_uuid(value) or is_uri(value) or _DATA_IMAGE.fullmatch(value) or _BASE64.fullmatch(value):
        return value
    raise PydanticCustomError("image_format", "must be an image UUID, a URL, a data URI or base64 data")


def _video(value: str) -> str:
    if is_uuid(value) or is_uri(value):
        return value
    raise PydanticCustomError("video_format", "must be a video UUID or a URL")


def _webhook(value: str) -> str:
    """The seed says `format: uri`; only an absolute http(s) URL can receive a POST."""
    parts = urlsplit(value) if is_uri(value) else None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise PydanticCustomError("uri_format", "must be an absolute http(s) URL")
    return value


Uuid = Annotated[str, AfterValidator(_uuid)]
NonEmpty = Annotated[str, Field(min_length=1)]
Hundredths = AfterValidator(_hundredths)
ImageRef = Annotated[str, AfterValidator(_image)]
VideoRef = Annotated[str, AfterValidator(_video)]
WebhookURL = Annotated[str, AfterValidator(_webhook)]
ToolName = Annotated[str, Field(min_length=1, max_length=TOOL_NAME_MAX, pattern=r"^[a-zA-Z0-9_-]+$")]
JsonObject = dict[str, Any]


def missing(field: str) -> PydanticCustomError:
    return PydanticCustomError(MISSING, "is required", {"field": field})


def unsupported(field: str, why: str) -> PydanticCustomError:
    return PydanticCustomError(UNSUPPORTED, why, {"field": field})


class WireModel(BaseModel):
    """Strict JSON: unknown keys refused, no coercion, no null, no NaN or infinity."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                if value is None and isinstance(key, str) and key in cls._wire_names():
                    raise PydanticCustomError(NULL, "must not be null", {"field": key})
        return data

    @classmethod
    def _wire_names(cls) -> set[str]:
        return {info.alias or name for name, info in cls.model_fields.items()}


# ---- textInference ------------------------------------------------------------------------


class Settings(WireModel):
    systemPrompt: Annotated[str, Field(min_length=1, max_length=SYSTEM_PROMPT_MAX)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2), Hundredths] = 1.0
    topP: Annotated[float, Field(gt=0, le=1), Hundredths] = 1.0
    frequencyPenalty: Annotated[float, Field(ge=-2, le=2), Hundredths] = 0.0
    maxTokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_MAX), BeforeValidator(_whole)] | None = None
    minP: Annotated[float, Field(ge=0, le=1), Hundredths] = 0.0
    presencePenalty: Annotated[float, Field(ge=-2, le=2), Hundredths] = 0.0
    promptCacheKey: str | None = None
    repetitionPenalty: Annotated[float, Field(ge=0.01, le=5), Hundredths] = 1.0
    stopSequences: Annotated[list[NonEmpty], Field(max_length=STOP_SEQUENCES_MAX)] = Field(
        default_factory=list
    )
    thinkingLevel: Literal["none", "low", "medium", "high", "xhigh"] = "none"
    topK: Annotated[int, Field(ge=0, le=999), BeforeValidator(_whole)] = 0


class Inputs(WireModel):
    images: Annotated[list[ImageRef], Field(min_length=1)] | None = None
    videos: Annotated[list[VideoRef], Field(min_length=1)] | None = None
    documents: Annotated[list[NonEmpty], Field(min_length=1)] | None = None  # SDK extra


class MessageToolCall(WireModel):
    """One call in an assistant message's history, as the SDK sends it back."""

    id: NonEmpty
    name: NonEmpty
    input: JsonObject | None = None  # the SDK leaves it out when the call had no input


class Message(WireModel):
    """A chat message. The seed has `user`/`assistant` with `content`; the SDK adds tool forms."""

    role: Literal["user", "assistant", "tool"]
    content: str | None = None
    id: NonEmpty | None = None  # role "tool": the id of the call this result answers
    tools: list[MessageToolCall] | None = None  # role "assistant": the calls it made

    @model_validator(mode="after")
    def _shape_of_role(self) -> Message:
        if self.role != "tool" and self.id is not None:
            raise unsupported("id", "is only allowed on messages with role 'tool'")
        if self.role != "assistant" and self.tools is not None:
            raise unsupported("tools", "is only allowed on messages with role 'assistant'")
        if self.role == "tool":
            if self.id is None:
                raise missing("id")
            if self.content is None:
                raise missing("content")
            return self  # a tool may have returned nothing: "" is a valid result
        if self.content is None:
            if self.role == "assistant" and self.tools:
                return self
            raise missing("content")
        if not self.content:
            raise PydanticCustomError(
                "string_too_short", "must not be empty", {"min_length": 1, "field": "content"}
            )
        return self


class Tool(WireModel):
    type: Literal["function", "search", "codeInterpreter"]
    name: ToolName | None = None
    description: str | None = None
    # The seed writes `additionalProperties: false` on `schema` itself, which would allow only
    # `{}`; its own examples pass full JSON Schemas, so any object is taken here.
    schema_: JsonObject | None = Field(default=None, alias="schema")

    @model_validator(mode="after")
    def _function_needs_name_and_schema(self) -> Tool:
        if self.type == "function":
            if self.name is None:
                raise missing("name")
            if self.schema_ is None:
                raise missing("schema")
        return self


class ToolChoice(WireModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None

    @model_validator(mode="after")
    def _tool_needs_name(self) -> ToolChoice:
        if self.type == "tool" and self.name is None:
            raise missing("name")
        return self


class TextInferenceTask(WireModel):
    taskType: Literal["textInference"]
    taskUUID: Uuid
    # Any non-empty id: which ids name a served model is decided by the engine registry.
    model: NonEmpty
    messages: Annotated[list[Message], Field(min_length=1)]
    settings: Settings | None = None
    inputs: Inputs | None = None
    seed: Annotated[int, Field(ge=0, le=SEED_MAX), BeforeValidator(_whole)] | None = None
    tools: Annotated[list[Tool], Field(min_length=1)] | None = None
    toolChoice: ToolChoice | None = None
    webhookURL: WebhookURL | None = None
    includeCost: bool = False
    includeUsage: bool = False
    outputFormat: Literal["TEXT"] = "TEXT"
    deliveryMethod: Literal["sync", "async", "stream"] = "sync"
    numberResults: Annotated[int, Field(ge=1, le=4), BeforeValidator(_whole)] = 1
    providerSettings: JsonObject | None = None  # SDK extra, e.g. {"google": {...}}

    @model_validator(mode="after")
    def _chosen_tool_exists(self) -> TextInferenceTask:
        choice = self.toolChoice
        if choice is None or choice.type != "tool" or self.tools is None:
            return self
        if choice.name not in {t.name for t in self.tools if t.type == "function"}:
            raise PydanticCustomError(
                "unknown_tool", "must name a function tool in tools", {"field": "toolChoice.name"}
            )
        return self


# ---- the other task types -----------------------------------------------------------------


class AuthenticationTask(WireModel):
    taskType: Literal["authentication"]
    apiKey: str
    connectionSessionUUID: Uuid | None = None


class GetResponseTask(WireModel):
    taskType: Literal["getResponse"]
    taskUUID: Uuid


class GetTaskDetailsTask(WireModel):
    taskType: Literal["getTaskDetails"]
    taskUUID: Uuid


class ImageUploadTask(WireModel):
    """`image` is a data URI (what the SDK sends for a local file), base64 or a URL."""

    taskType: Literal["imageUpload"]
    taskUUID: Uuid
    image: ImageRef


class PingTask(WireModel):
    taskType: Literal["ping"]
    ping: bool


Task = (
    TextInferenceTask | AuthenticationTask | GetResponseTask | GetTaskDetailsTask | ImageUploadTask | PingTask
)

TASK_MODELS: dict[str, type[Task]] = {
    "textInference": TextInferenceTask,
    "authentication": AuthenticationTask,
    "getResponse": GetResponseTask,
    "getTaskDetails": GetTaskDetailsTask,
    "imageUpload": ImageUploadTask,
    "ping": PingTask,
}

__all__ = [
    "SEED_MAX",
    "TASK_MODELS",
    "AuthenticationTask",
    "GetResponseTask",
    "GetTaskDetailsTask",
    "ImageUploadTask",
    "Inputs",
    "Message",
    "MessageToolCall",
    "PingTask",
    "Settings",
    "Task",
    "TextInferenceTask",
    "Tool",
    "ToolChoice",
    "is_uri",
    "is_uuid",
]
