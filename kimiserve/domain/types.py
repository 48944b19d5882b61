"""The canonical request both protocols translate into, and the events every engine yields.

Everything here is a frozen dataclass: built once at the protocol edge, never mutated after.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "cancelled", "unknown"]
ThinkingLevel = Literal["none", "low", "medium", "high", "xhigh"]
MediaKind = Literal["image", "video"]

# The one reasoning budget, in tokens, per thinking level: both protocols' levels map here, and an
# engine that reasons within a budget (the embedded one closes its `<think>` section itself when
# the budget is spent) bounds reasoning by it. `maxTokens` still covers reasoning plus answer.
THINKING_BUDGETS: dict[ThinkingLevel, int] = {
    "none": 0,
    "low": 256,
    "medium": 1024,
    "high": 4096,
    "xhigh": 16384,
}


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: `arguments` is the JSON text of the arguments object; in a turn
    that finished with `length` it is the text as cut, which may not parse (as OpenAI's)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Message:
    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    # An assistant turn's reasoning, sent back in history; engines put it in the prompt only when
    # the request's `keep_reasoning` says so (OpenAI `thinking.keep: "all"`).
    reasoning: str = ""
    # A user turn's images and videos: references while a protocol translates (URL, data URI,
    # uploaded id), data URIs once resolved through the SSRF-safe fetcher (media/resolve.py).
    images: tuple[str, ...] = ()
    videos: tuple[str, ...] = ()


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call; `parameters` is the JSON Schema, as JSON text."""

    name: str
    description: str = ""
    parameters: str = "{}"


@dataclass(frozen=True)
class ToolChoice:
    mode: Literal["auto", "required", "none", "named"] = "auto"
    name: str | None = None


@dataclass(frozen=True)
class Sampling:
    """Sampler settings for one sequence. Defaults disable every sampler but temperature."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int = 0
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    # Log probabilities of the answer's tokens: None off; N (0-20) each token's logprob plus its
    # N most likely alternatives (OpenAI `logprobs: true` with `top_logprobs: N`).
    logprobs: int | None = None


@dataclass(frozen=True)
class Constraint:
    """Constrained decoding: exactly one of a JSON Schema (JSON text) or a GBNF grammar."""

    json_schema: str | None = None
    grammar: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One generation (one sequence). `numberResults`/`n` fan out into several of these."""

    model: str
    messages: tuple[Message, ...]
    sampling: Sampling = field(default_factory=Sampling)
    constraint: Constraint | None = None
    thinking: ThinkingLevel = "none"
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    # Several tool calls in one turn allowed (OpenAI `parallel_tool_calls`, the default there, in
    # vLLM and in Moonshot's API). False: a turn makes at most one call. A named `tool_choice`
    # makes exactly one call either way.
    parallel_tool_calls: bool = True
    prompt_cache_key: str | None = None
    # Prefix-cache namespace (the account id): an engine reuses a cached prompt prefix only for a
    # request of the same scope, so one account can never probe another's prompts by timing or
    # by `cached_tokens`. None: the request shares no cache with a scoped one.
    cache_scope: str | None = None
    # Keep earlier assistant turns' reasoning in the prompt (otherwise it is dropped).
    keep_reasoning: bool = False
    # An exact reasoning budget in tokens (Anthropic's `thinking.budget_tokens`), in place of
    # THINKING_BUDGETS[thinking]; `thinking` still says whether, and roughly how much, to think.
    thinking_budget: int | None = None

    @property
    def images(self) -> tuple[str, ...]:
        """Every message's images, in conversation order."""
        return tuple(i for m in self.messages for i in m.images)

    @property
    def videos(self) -> tuple[str, ...]:
        """Every message's videos, in conversation order."""
        return tuple(v for m in self.messages for v in m.videos)


def reasoning_budget(request: GenerationRequest) -> int:
    """The reasoning tokens a request may use: its exact budget, else its level's (0: no thinking)."""
    if request.thinking == "none":
        return 0
    if request.thinking_budget is not None:
        return request.thinking_budget
    return THINKING_BUDGETS[request.thinking]


# ---- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its text, its UTF-8 bytes (a character may span tokens, so `token`
    can hold U+FFFD where `token_bytes` does not), its log probability, and the most likely
    alternatives at that position (most likely first; empty for an alternative itself)."""

    token: str
    logprob: float
    token_bytes: bytes
    top: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class TextDelta:
    text: str
    # The logprobs of the tokens this text came from, when the request asked for them
    # (`Sampling.logprobs`); None when it did not (or the engine gave none).
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True)
class ToolCallEvent:
    call: ToolCall


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Finished:
    reason: FinishReason


Event = TextDelta | ReasoningDelta | ToolCallEvent | Usage | Finished


# ---- the built-in tools' loop (domain/toolloop.py runs them) -------------------------------


@dataclass(frozen=True)
class ToolCitation:
    title: str
    url: str


@dataclass(frozen=True)
class BuiltinToolCall:
    """The model called a built-in tool: the pipeline emits this in place of the engine's
    `ToolCallEvent`, then runs the tool."""

    call: ToolCall


@dataclass(frozen=True)
class BuiltinToolResult:
    """A built-in tool's run: `result` is what the client sees (camelCase keys), `content` what
    the model was given; a failed run (`is_error`) is passed to the model too, never raised."""

    call: ToolCall
    result: dict[str, object]
    content: str
    citations: tuple[ToolCitation, ...] = ()
    is_error: bool = False


@dataclass(frozen=True)
class Charged:
    """What a finished generation was charged, in micro-USD: its cost at the model's prices,
    capped at its hold (the cost a protocol reports). Yielded once, just before `Finished`."""

    cost_micros: int


PipelineEvent = Event | BuiltinToolCall | BuiltinToolResult | Charged
"""What the front door yields per generation: the engine's events, the built-in tools' calls and
runs, and the charge."""
