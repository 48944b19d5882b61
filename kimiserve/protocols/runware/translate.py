"""Runware wire ↔ domain: a validated `TextInferenceTask` → GenerationRequest; results → items.

Works on the typed wire models only: the defaults a client may leave out are the models'
defaults, so the wire model and the request it becomes cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from kimiserve.domain.capabilities import Parameters
from kimiserve.domain.inference import Admitted, Call
from kimiserve.domain.results import GenerationResult
from kimiserve.domain.types import (
    BuiltinToolResult,
    GenerationRequest,
    Message,
    Sampling,
    ToolCall,
    ToolChoice,
    ToolSpec,
    Usage,
)
from kimiserve.errors import InvalidRequest, UnsupportedFeature
from kimiserve.platform.prices import micros_to_usd
from kimiserve.protocols.runware.models import Message as WireMessage
from kimiserve.protocols.runware.models import Settings, TextInferenceTask
from kimiserve.protocols.runware.models import ToolChoice as WireToolChoice

PROTOCOL = "runware"
TASK_TYPE = "textInference"
DEFAULT_SETTINGS = Settings()

# A call ends the turn as a stop: the seed has no `tool_calls` reason (RUNWARE_PROTOCOL.md).
_FINISH = {"stop": "stop", "length": "length", "tool_calls": "stop", "content_filter": "content_filter"}
_CHOICE = {"auto": "auto", "any": "required", "none": "none", "tool": "named"}


def refuse_unsupported(task: TextInferenceTask) -> None:
    """Fields no engine here honours, refused by name (what the served model cannot do is the
    front door's check, with the names of `parameters`)."""
    inputs = task.inputs
    if inputs is not None and inputs.documents:
        raise UnsupportedFeature("The served model has no document input.", parameter="inputs.documents")
    if task.webhookURL is not None and task.deliveryMethod == "stream":
        raise UnsupportedFeature(
            "webhookURL cannot be combined with deliveryMethod 'stream'.", parameter="webhookURL"
        )
    builtin: set[str] = set()
    for i, tool in enumerate(task.tools or ()):
        if tool.type != "function":
            # A built-in tool, run by the server's tool loop; declared once.
            if tool.type in builtin:
                raise InvalidRequest(
                    f"tools.{i}.type: the built-in tool {tool.type!r} is declared twice.",
                    parameter=f"tools.{i}.type",
                    code="invalidTools",
                )
            builtin.add(tool.type)


def parameters(task: TextInferenceTask) -> Parameters:
    """How a task names what the front door checks: its images and videos are `inputs`."""
    functions = [i for i, t in enumerate(task.tools or ()) if t.type == "function"]
    return Parameters(
        thinking="settings.thinkingLevel",
        tools="tools",
        tool_choice="toolChoice",
        media=lambda _message, kind, k: f"inputs.{kind}s.{k}",
        media_input=lambda _message, kind, _k: f"inputs.{kind}s",
        tool_name=lambda j: f"tools.{functions[j]}.name",
    )


def to_call(
    task: TextInferenceTask, on_admitted: Callable[[Admitted], Awaitable[None]] | None = None
) -> Call:
    """The task as the front door takes it; `on_admitted` records it (its delivery's business)."""
    refuse_unsupported(task)
    inputs = task.inputs
    images = tuple(inputs.images or ()) if inputs is not None else ()
    videos = tuple(inputs.videos or ()) if inputs is not None else ()
    return Call(
        model=task.model,
        request=to_generation_request(task, task.model, images, videos),
        protocol=PROTOCOL,
        parameters=parameters(task),
        n=task.numberResults,
        seed=task.seed,
        request_id=task.taskUUID,
        builtins=builtin_tools(task),
        on_admitted=on_admitted,
    )


def _tools(task: TextInferenceTask) -> tuple[ToolSpec, ...]:
    """The client's function tools (built-ins go to the pipeline by name: `builtin_tools`)."""
    return tuple(
        ToolSpec(name=t.name or "", description=t.description or "", parameters=json.dumps(t.schema_ or {}))
        for t in task.tools or ()
        if t.type == "function"
    )


def builtin_tools(task: TextInferenceTask) -> tuple[str, ...]:
    """The built-in tools the task names (`search`, `codeInterpreter`): the server runs them."""
    return tuple(t.type for t in task.tools or () if t.type != "function")


def _tool_choice(choice: WireToolChoice | None) -> ToolChoice:
    if choice is None:
        return ToolChoice()
    mode = _CHOICE[choice.type]
    return ToolChoice(mode=mode, name=choice.name if mode == "named" else None)  # type: ignore[arg-type]


def _message(wire: WireMessage) -> Message:
    if wire.role == "tool":
        return Message(role="tool", content=wire.content or "", tool_call_id=wire.id)
    calls = tuple(
        ToolCall(id=t.id, name=t.name, arguments=json.dumps(t.input if t.input is not None else {}))
        for t in wire.tools or ()
    )
    return Message(role=wire.role, content=wire.content or "", tool_calls=calls)


def to_generation_request(
    task: TextInferenceTask,
    model_id: str,
    images: tuple[str, ...] = (),
    videos: tuple[str, ...] = (),
) -> GenerationRequest:
    """`images` and `videos` are the task's `inputs` (references the front door resolves): they
    belong to the task's last user message (the turn the task asks about)."""
    settings = task.settings or DEFAULT_SETTINGS
    messages = [_message(m) for m in task.messages]
    if images or videos:
        last = max((i for i, m in enumerate(messages) if m.role == "user"), default=len(messages) - 1)
        messages[last] = replace(messages[last], images=images, videos=videos)
    if settings.systemPrompt:
        messages.insert(0, Message(role="system", content=settings.systemPrompt))
    sampling = Sampling(
        temperature=settings.temperature,
        top_p=settings.topP,
        top_k=settings.topK,
        min_p=settings.minP,
        frequency_penalty=settings.frequencyPenalty,
        presence_penalty=settings.presencePenalty,
        repetition_penalty=settings.repetitionPenalty,
        max_tokens=settings.maxTokens,
        stop=tuple(settings.stopSequences),
    )
    return GenerationRequest(
        model=model_id,
        messages=tuple(messages),
        sampling=sampling,
        thinking=settings.thinkingLevel,
        tools=_tools(task),
        tool_choice=_tool_choice(task.toolChoice),
        # No seed field says how many calls a turn may make: `parallel_tool_calls` keeps its
        # default (several), and `tools` in the result lists each of them.
        prompt_cache_key=settings.promptCacheKey,
    )


def usage_item(usage: Usage) -> dict[str, int]:
    return {
        "promptTokens": usage.prompt_tokens,
        "completionTokens": usage.completion_tokens,
        "totalTokens": usage.total_tokens,
        "thinkingTokens": usage.reasoning_tokens,
        "cachedTokens": usage.cached_tokens,
    }


def finish_reason(reason: str) -> str:
    return _FINISH.get(reason, "unknown")


def tool_item(call: ToolCall) -> dict[str, Any]:
    """A call as the result carries it: the shape the client sends back as history."""
    item: dict[str, Any] = {"id": call.id, "name": call.name}
    try:
        arguments = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        arguments = None  # engines validate calls; an engine that does not is not trusted here
    if isinstance(arguments, dict):
        item["input"] = arguments
    return item


def result_item(task: TextInferenceTask, result: GenerationResult) -> dict[str, Any]:
    item: dict[str, Any] = {
        "taskType": TASK_TYPE,
        "taskUUID": task.taskUUID,
        "status": "success",
        "text": result.text,
        "finishReason": finish_reason(result.finish_reason),
        "seed": result.seed,
    }
    if result.reasoning:
        item["reasoningContent"] = [result.reasoning]
    if result.tool_calls:
        item["tools"] = [tool_item(c) for c in result.tool_calls]
    _add_builtin(item, result)
    if task.includeUsage:
        item["usage"] = usage_item(result.usage)
    if task.includeCost:
        item["cost"] = micros_to_usd(result.cost_micros)
    return item


def delta_chunk(task_uuid: str, text: str, *, reasoning: bool = False) -> dict[str, Any]:
    key = "reasoningContent" if reasoning else "text"
    return {"taskUUID": task_uuid, "taskType": TASK_TYPE, "delta": {key: text}, "finishReason": None}


def tool_chunk(task_uuid: str, call: ToolCall) -> dict[str, Any]:
    """One call, whole, as it is made: `delta.tools` (SDK 0.5.24 reads only `delta.text`, so it
    skips these chunks and goes on; the terminal chunk repeats every call in `tools`)."""
    return {
        "taskUUID": task_uuid,
        "taskType": TASK_TYPE,
        "delta": {"tools": [tool_item(call)]},
        "finishReason": None,
    }


def terminal_chunk(task: TextInferenceTask, result: GenerationResult) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "taskUUID": task.taskUUID,
        "taskType": TASK_TYPE,
        "delta": {},
        "finishReason": finish_reason(result.finish_reason),
        "seed": result.seed,
        "usage": usage_item(result.usage),
        "cost": micros_to_usd(result.cost_micros),
    }
    if result.reasoning:
        chunk["reasoningContent"] = [result.reasoning]
    if result.tool_calls:
        chunk["tools"] = [tool_item(c) for c in result.tool_calls]
    _add_builtin(chunk, result)
    return chunk


# ---- the built-in tools (run by the server; no seed field exists, kimiserve's choice) --------


def builtin_item(run: BuiltinToolResult) -> dict[str, Any]:
    """One built-in run as the result shows it: the call (`id`, `name`, `input`), then `result`
    (the tool's visible output, or `{"error": …}`), `isError`, and `citations` when it has any."""
    item = tool_item(run.call)
    item["result"] = run.result
    item["isError"] = run.is_error
    if run.citations:
        item["citations"] = [{"title": c.title, "url": c.url} for c in run.citations]
    return item


def _add_builtin(item: dict[str, Any], result: GenerationResult) -> None:
    if result.builtin:
        item["builtinTools"] = [builtin_item(r) for r in result.builtin]
    if result.citations:
        item["citations"] = [{"title": c.title, "url": c.url} for c in result.citations]


def builtin_call_chunk(task_uuid: str, call: ToolCall) -> dict[str, Any]:
    """A built-in call as the model makes it, before it runs: `delta.builtinTools` (no `result`)."""
    return {
        "taskUUID": task_uuid,
        "taskType": TASK_TYPE,
        "delta": {"builtinTools": [tool_item(call)]},
        "finishReason": None,
    }


def builtin_result_chunk(task_uuid: str, run: BuiltinToolResult) -> dict[str, Any]:
    """A built-in call once it ran: `delta.builtinTools` again, now with its `result`."""
    return {
        "taskUUID": task_uuid,
        "taskType": TASK_TYPE,
        "delta": {"builtinTools": [builtin_item(run)]},
        "finishReason": None,
    }
