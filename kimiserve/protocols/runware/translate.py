"""Runware wire ↔ domain: a validated `TextInferenceTask` → GenerationRequest; results → items.

Works on the typed wire models only: the defaults a client may leave out are the models'
defaults, so the wire model and the request it becomes cannot drift apart.
"""

from __future__ import annotations

import json
from typing import Any

from kimiserve.domain.pipeline import GenerationResult
from kimiserve.domain.types import GenerationRequest, Message, Sampling, ToolCall, Usage
from kimiserve.errors import UnsupportedFeature
from kimiserve.platform.prices import micros_to_usd
from kimiserve.protocols.runware.models import Message as WireMessage
from kimiserve.protocols.runware.models import Settings, TextInferenceTask

TASK_TYPE = "textInference"
DEFAULT_SETTINGS = Settings()

_FINISH = {"stop": "stop", "length": "length", "tool_calls": "stop", "content_filter": "content_filter"}


def refuse_unsupported(task: TextInferenceTask, *, resolves_images: bool = False) -> None:
    """Fields whose behaviour lands in later work: validated already, refused by name here.

    `inputs.images` is left to a caller that resolves the images first (`resolves_images`),
    so that an image that cannot be had is named by its index before the model's lack of
    vision is reported; any other caller gets the images refused outright.
    """
    settings = task.settings or DEFAULT_SETTINGS
    if task.tools is not None:
        raise UnsupportedFeature("Tool calling is not available on this server yet.", parameter="tools")
    if task.toolChoice is not None:
        raise UnsupportedFeature("Tool calling is not available on this server yet.", parameter="toolChoice")
    if settings.thinkingLevel != "none":
        raise UnsupportedFeature(
            "Thinking is not available on this model yet; use thinkingLevel 'none'.",
            parameter="settings.thinkingLevel",
        )
    inputs = task.inputs
    if inputs is not None:
        if inputs.images and not resolves_images:
            raise UnsupportedFeature("The served model has no image input.", parameter="inputs.images")
        if inputs.videos:
            raise UnsupportedFeature("The served model has no video input.", parameter="inputs.videos")
        if inputs.documents:
            raise UnsupportedFeature("The served model has no document input.", parameter="inputs.documents")
    if task.webhookURL is not None and task.deliveryMethod == "stream":
        raise UnsupportedFeature(
            "webhookURL cannot be combined with deliveryMethod 'stream'.", parameter="webhookURL"
        )


def _message(wire: WireMessage) -> Message:
    if wire.role == "tool":
        return Message(role="tool", content=wire.content or "", tool_call_id=wire.id)
    calls = tuple(
        ToolCall(id=t.id, name=t.name, arguments=json.dumps(t.input if t.input is not None else {}))
        for t in wire.tools or ()
    )
    return Message(role=wire.role, content=wire.content or "", tool_calls=calls)


def to_generation_request(
    task: TextInferenceTask, model_id: str, images: tuple[str, ...] = ()
) -> GenerationRequest:
    """`images` are the task's resolved `inputs.images`, as data URIs."""
    settings = task.settings or DEFAULT_SETTINGS
    messages = [_message(m) for m in task.messages]
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
        images=images,
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
    if task.includeUsage:
        item["usage"] = usage_item(result.usage)
    if task.includeCost:
        item["cost"] = micros_to_usd(result.cost_micros)
    return item


def delta_chunk(task_uuid: str, text: str, *, reasoning: bool = False) -> dict[str, Any]:
    key = "reasoningContent" if reasoning else "text"
    return {"taskUUID": task_uuid, "taskType": TASK_TYPE, "delta": {key: text}, "finishReason": None}


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
    return chunk
