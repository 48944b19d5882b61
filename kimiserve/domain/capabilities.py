"""What a served model can do, checked once for every protocol, naming the client's parameter.

A protocol translates its wire request into a `GenerationRequest` without knowing the model; the
front door (`inference.py`) resolves the model and calls `check` before anything is fetched, held
or run. Each refusal names the parameter as the client wrote it, through the `Parameters` the
protocol gave with the request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kimiserve.domain.served import ServedModel
from kimiserve.domain.types import GenerationRequest, MediaKind, Message
from kimiserve.engines.base import Capabilities
from kimiserve.errors import InvalidRequest, UnsupportedFeature

MediaParameter = Callable[[int, MediaKind, int], str]
"""(message index, "image" or "video", index within the message) → the client's parameter name."""


def _canonical_media(message: int, kind: MediaKind, k: int) -> str:
    return f"messages[{message}].{kind}s[{k}]"


def _canonical_tool(index: int) -> str:
    return f"tools[{index}]"


@dataclass(frozen=True)
class Parameters:
    """How one request's protocol names what the front door checks (per request: OpenAI names
    `reasoning_effort` or `thinking`, whichever the client sent)."""

    thinking: str = "thinking"
    tools: str = "tools"
    tool_choice: str = "tool_choice"
    media: MediaParameter = _canonical_media  # a reference that cannot be fetched or decoded
    media_input: MediaParameter | None = None  # media refused by a model without vision (None: `media`)
    tool_name: Callable[[int], str] = _canonical_tool  # the i-th function tool's name


def served_name(model: ServedModel) -> str:
    """The model as a refusal names it: a local stand-in says so."""
    if model.served_by:
        return f"{model.id} (served here by the local stand-in {model.served_by})"
    return model.id


def check(
    model: ServedModel, request: GenerationRequest, names: Parameters, builtins: Sequence[str] = ()
) -> None:
    """Refuse what `model` cannot honour, and tool lists that cannot be honoured anywhere."""
    capabilities: Capabilities = model.engine.capabilities
    if request.thinking != "none" and capabilities.thinking == "none":
        raise UnsupportedFeature(
            f"Thinking is not available with {served_name(model)}; send the request without it.",
            parameter=names.thinking,
        )
    if capabilities.tools == "none":
        if request.tools or builtins:
            raise UnsupportedFeature(
                f"Tool calling is not available with {served_name(model)}; send no tools.",
                parameter=names.tools,
            )
        if request.tool_choice.mode not in ("auto", "none"):
            raise UnsupportedFeature(
                f"Tool calling is not available with {served_name(model)}; send no tool choice.",
                parameter=names.tool_choice,
            )
    if not capabilities.vision:
        for i, message in enumerate(request.messages):
            for kind, refs in _media_of(message):
                if refs:
                    raise UnsupportedFeature(
                        f"{served_name(model)} has no {kind} input; send the request without it.",
                        parameter=(names.media_input or names.media)(i, kind, 0),
                    )
    _check_tools(request, names, builtins)


def _check_tools(request: GenerationRequest, names: Parameters, builtins: Sequence[str]) -> None:
    seen: set[str] = set()
    for i, tool in enumerate(request.tools):
        where = names.tool_name(i)
        if tool.name in seen:
            raise InvalidRequest(
                f"{where}: {tool.name!r} is declared twice; tool names must be unique.",
                parameter=where,
                code="invalidTools",
            )
        if tool.name in builtins:
            raise InvalidRequest(
                f"{where}: {tool.name!r} is the name of a built-in tool the request names; "
                "rename the function.",
                parameter=where,
                code="invalidTools",
            )
        seen.add(tool.name)
    choice = request.tool_choice
    if choice.mode == "required" and not request.tools and not builtins:
        raise InvalidRequest(
            f"{names.tool_choice} asks for a tool call but the request has no tools.",
            parameter=names.tool_choice,
            code="invalidToolChoice",
        )
    if choice.mode == "named" and choice.name not in seen and choice.name not in builtins:
        raise InvalidRequest(
            f"{names.tool_choice} names {choice.name!r}, which is not among the tools.",
            parameter=names.tool_choice,
            code="invalidToolChoice",
        )


def _media_of(message: Message) -> tuple[tuple[MediaKind, tuple[str, ...]], ...]:
    return (("image", message.images), ("video", message.videos))
