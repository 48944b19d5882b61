"""Runware wire ↔ domain: a validated textInference task → GenerationRequest; results → items.

Works on the validated task as its wire dict (camelCase keys), so it never depends on how
the pydantic models name their fields.
"""

from __future__ import annotations

import json
from typing import Any

from kimiserve.domain.inference import GenerationResult
from kimiserve.domain.types import GenerationRequest, Message, Sampling, ToolCall, Usage
from kimiserve.errors import UnsupportedFeature

TASK_TYPE = "textInference"

_FINISH = {"stop": "stop", "length": "length", "tool_calls": "stop", "content_filter": "content_filter"}


def refuse_unsupported(task: dict[str, Any], *, resolves_images: bool = False) -> None:
    """Fields whose behaviour lands in later work: validated already, refused by name here.

    `inputs.images` is left to a caller that resolves the images first (`resolves_images`),
    so that an image that cannot be had is named by its index before the model's lack of
    vision is reported; any other caller gets the images refused outright.
    """
    settings = task.get("settings") or {}
    if task.get("tools") is not None:
        raise UnsupportedFeature("Tool calling is not available on this server yet.", parameter="tools")
    if task.get("toolChoice") is not None:
        raise UnsupportedFeature("Tool calling is not available on this server yet.", parameter="toolChoice")
    if settings.get("thinkingLevel", "none") != "none":
        raise UnsupportedFeature(
            "Thinking is not available on this model yet; use thinkingLevel 'none'.",
            parameter="settings.thinkingLevel",
        )
    inputs = task.get("inputs") or {}
    if inputs.get("images") and not resolves_images:
        raise UnsupportedFeature("The served model has no image input.", parameter="inputs.images")
    for name in ("videos", "documents"):
        if inputs.get(name):
            raise UnsupportedFeature(
                f"The served model has no {name[:-1]} input.", parameter=f"inputs.{name}"
            )
    if task.get("webhookURL") is not None and task.get("deliveryMethod") == "stream":
        raise UnsupportedFeature(
            "webhookURL cannot be combined with deliveryMethod 'stream'.", parameter="webhookURL"
        )


def _message(raw: dict[str, Any]) -> Message:
    role = raw["role"]
    if role == "tool":
        return Message(role="tool", content=str(raw.get("content", "")), tool_call_id=raw.get("id"))
    calls = tuple(
        ToolCall(
            id=str(t.get("id", "")), name=str(t.get("name", "")), arguments=json.dumps(t.get("input", {}))
        )
        for t in raw.get("tools") or ()
    )
    return Message(role=role, content=str(raw.get("content") or ""), tool_calls=calls)


def to_generation_request(
    task: dict[str, Any], model_id: str, images: tuple[str, ...] = ()
) -> GenerationRequest:
    """`images` are the task's resolved `inputs.images`, as data URIs."""
    settings = task.get("settings") or {}
    messages = [_message(m) for m in task["messages"]]
    if settings.get("systemPrompt"):
        messages.insert(0, Message(role="system", content=settings["systemPrompt"]))
    sampling = Sampling(
        temperature=float(settings.get("temperature", 1.0)),
        top_p=float(settings.get("topP", 1.0)),
        top_k=int(settings.get("topK", 0)),
        min_p=float(settings.get("minP", 0.0)),
        frequency_penalty=float(settings.get("frequencyPenalty", 0.0)),
        presence_penalty=float(settings.get("presencePenalty", 0.0)),
        repetition_penalty=float(settings.get("repetitionPenalty", 1.0)),
        max_tokens=settings.get("maxTokens"),
        stop=tuple(settings.get("stopSequences") or ()),
    )
    return GenerationRequest(
        model=model_id,
        messages=tuple(messages),
        sampling=sampling,
        images=images,
        prompt_cache_key=settings.get("promptCacheKey"),
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


def result_item(task: dict[str, Any], result: GenerationResult) -> dict[str, Any]:
    item: dict[str, Any] = {
        "taskType": TASK_TYPE,
        "taskUUID": task["taskUUID"],
        "status": "success",
        "text": result.text,
        "finishReason": finish_reason(result.finish_reason),
        "seed": result.seed,
    }
    if result.reasoning:
        item["reasoningContent"] = [result.reasoning]
    if task.get("includeUsage"):
        item["usage"] = usage_item(result.usage)
    if task.get("includeCost"):
        item["cost"] = result.cost
    return item


def delta_chunk(task_uuid: str, text: str, *, reasoning: bool = False) -> dict[str, Any]:
    key = "reasoningContent" if reasoning else "text"
    return {"taskUUID": task_uuid, "taskType": TASK_TYPE, "delta": {key: text}, "finishReason": None}


def terminal_chunk(task: dict[str, Any], result: GenerationResult) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "taskUUID": task["taskUUID"],
        "taskType": TASK_TYPE,
        "delta": {},
        "finishReason": finish_reason(result.finish_reason),
        "seed": result.seed,
        "usage": usage_item(result.usage),
        "cost": result.cost,
    }
    if result.reasoning:
        chunk["reasoningContent"] = [result.reasoning]
    return chunk
