"""Seed 000's textInference constraints as a table: plain data, shared by every test that needs it.

    from tests.protocols.runware.validation_cases import ACCEPTS, REJECTS, VALID_TASK, Case

`test_validation.py` runs it against `parse_task` (no server); the live tests send each
`case.task()` over HTTP and compare the error's `code`, `parameter` and the HTTP `status`.

A case is VALID_TASK plus `changes`: `(path, value)` pairs applied in order, where `path` is
dotted (`settings.temperature`, `messages.0.content`; a missing dict on the way is created, an
index equal to a list's length appends) and `value` is the new value or `DELETE`.

`task()` gives each call a fresh taskUUID unless the case itself sets or deletes `taskUUID`,
so a live server never answers `conflictTaskUUID` for a reused one; accepted cases about the
UUID's form use `FRESH_UPPER_UUID` / `FRESH_V1_UUID`, which also build a new one each time.

`tags` say what an accepted case needs from a live server beyond validation (a live runner
may skip or expect a refusal): `tools`, `inputs`, `webhook`, `async`, `stream`, `thinking`,
`many` (numberResults > 1), `slow` (a large maxTokens), `provider` (providerSettings), and
`nonstandard-json` (a value JSON cannot carry, e.g. Infinity).
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from typing import Any, Final


class _Delete:
    """Marks a path to remove. One instance; survives copying."""

    def __repr__(self) -> str:
        return "DELETE"

    def __copy__(self) -> _Delete:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _Delete:
        return self


DELETE: Final = _Delete()


@dataclass(frozen=True)
class _FreshUUID:
    """Marks a new UUID per built task, in a given textual form."""

    form: str

    def make(self) -> str:
        return str(uuid.uuid1()) if self.form == "v1" else str(uuid.uuid4()).upper()


FRESH_UPPER_UUID: Final = _FreshUUID("upper")
FRESH_V1_UUID: Final = _FreshUUID("v1")

TASK_UUID = "8f0b5d8e-6b3a-4c1e-9d2f-3a7e5c1b9d40"
SEED_MAX = 9223372036854776000
UUID_V4 = "1e0f7c3a-2b4d-4e6f-8a9b-0c1d2e3f4a5b"
UUID_V1 = "6fa459ea-ee8a-11ca-9b2b-0800200c9a66"
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="

VALID_TASK: Final[dict[str, Any]] = {
    "taskType": "textInference",
    "taskUUID": TASK_UUID,
    "model": "moonshotai:kimi@2.6",
    "messages": [{"role": "user", "content": "Say hello."}],
    "settings": {"maxTokens": 8},
}

WEATHER_TOOL: Final[dict[str, Any]] = {
    "type": "function",
    "name": "get_weather",
    "description": "Get current weather for a city",
    "schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}

# The SDK's tool-call history: an assistant turn with `tools` and no content, then the result.
TOOL_HISTORY: Final[list[dict[str, Any]]] = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "tools": [{"id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}]},
    {"role": "tool", "id": "call_1", "content": '{"temp": 21}'},
]

Change = tuple[str, Any]


@dataclass(frozen=True)
class Case:
    name: str
    changes: tuple[Change, ...]
    code: str | None = None  # expected error code; None for an accepted case
    parameter: str | None = None
    status: int = 400
    tags: frozenset[str] = field(default_factory=frozenset)

    def task(self, task_uuid: str | None = None) -> dict[str, Any]:
        task = copy.deepcopy(VALID_TASK)
        if not any(path == "taskUUID" for path, _ in self.changes):
            task["taskUUID"] = task_uuid or str(uuid.uuid4())
        for path, value in self.changes:
            apply(task, path, value)
        return task


def apply(task: dict[str, Any], path: str, value: Any) -> None:
    """Set (or with DELETE remove) the value at a dotted path, creating dicts on the way."""
    *parents, last = path.split(".")
    node: Any = task
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    value = value.make() if isinstance(value, _FreshUUID) else copy.deepcopy(value)
    if isinstance(node, list):
        index = int(last)
        if value is DELETE:
            del node[index]
        elif index == len(node):
            node.append(value)
        else:
            node[index] = value
    elif value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value


def _code(prefix: str, path: str) -> str:
    name = next(part for part in reversed(path.split(".")) if not part.isdigit())
    return prefix + name[0].upper() + name[1:]


def bad(
    path: str, value: Any, why: str, *, parameter: str | None = None, before: tuple[Change, ...] = ()
) -> Case:
    """`path` set to an invalid value: `invalid<Param>` at `parameter` (default: `path`)."""
    at = parameter or path
    return Case(f"{at}:{why}", (*before, (path, value)), _code("invalid", at), at)


def absent(path: str, *, before: tuple[Change, ...] = (), parameter: str | None = None) -> Case:
    """A required field left out: `missing<Param>`."""
    at = parameter or path
    return Case(f"{at}:missing", (*before, (path, DELETE)), _code("missing", at), at)


def unknown(path: str, *, before: tuple[Change, ...] = ()) -> Case:
    """A key the seed does not define: `unsupportedParameter` naming its path."""
    return Case(f"{path}:unknown", (*before, (path, 1)), "unsupportedParameter", path)


def ok(name: str, *changes: Change, tags: tuple[str, ...] = ()) -> Case:
    return Case(name, changes, tags=frozenset(tags))


def _floats(name: str, low: float, high: float, off_grid: float) -> list[Case]:
    """The four ways every float setting of the seed can be wrong, plus the two JSON-type ones."""
    path = f"settings.{name}"
    return [
        bad(path, round(low - 0.01, 2), "below-min"),
        bad(path, round(high + 0.01, 2), "above-max"),
        bad(path, off_grid, "not-multiple-of-0.01"),
        bad(path, True, "bool-as-number"),
        bad(path, str(low), "string-as-number"),
    ]


WITH_TOOL: Final[tuple[Change, ...]] = (("tools", [WEATHER_TOOL]),)

REJECTS: Final[list[Case]] = [
    # -- taskType, taskUUID, model -------------------------------------------------------------
    absent("taskType"),
    Case("taskType:unknown", (("taskType", "textInferenceX"),), "unsupportedTaskType", "taskType"),
    bad("taskType", 5, "not-a-string"),
    absent("taskUUID"),
    bad("taskUUID", "not-a-uuid", "not-a-uuid"),
    bad("taskUUID", "8f0b5d8e6b3a4c1e9d2f3a7e5c1b9d40", "no-hyphens"),
    bad("taskUUID", TASK_UUID + "0", "too-long"),
    bad("taskUUID", "", "empty"),
    bad("taskUUID", 12345, "not-a-string"),
    absent("model"),
    bad("model", "", "empty"),
    bad("model", 26, "not-a-string"),
    # -- messages ------------------------------------------------------------------------------
    absent("messages"),
    bad("messages", [], "empty"),
    bad("messages", "Say hello.", "not-an-array"),
    bad("messages.0", "Say hello.", "item-not-an-object"),
    absent("messages.0.role"),
    bad("messages.0.role", "system", "bad-role"),
    bad("messages.0.role", "User", "role-is-case-sensitive"),
    absent("messages.0.content"),
    bad("messages.0.content", "", "empty"),
    bad("messages.0.content", ["Say hello."], "not-a-string"),
    bad("messages.0.content", None, "null"),
    unknown("messages.0.name"),
    bad(
        "messages.1.content",
        "",
        "empty-later-item",
        before=(("messages.1", {"role": "assistant", "content": "x"}),),
    ),
    Case(
        "messages.1.content:assistant-without-content-or-tools",
        (("messages.1", {"role": "assistant"}),),
        "missingContent",
        "messages.1.content",
    ),
    Case(
        "messages.0.tools:on-a-user-message",
        (("messages.0.tools", [{"id": "c", "name": "f"}]),),
        "unsupportedParameter",
        "messages.0.tools",
    ),
    Case(
        "messages.0.id:on-a-user-message", (("messages.0.id", "c"),), "unsupportedParameter", "messages.0.id"
    ),
    absent("messages.2.id", before=(("messages", TOOL_HISTORY),)),
    absent("messages.2.content", before=(("messages", TOOL_HISTORY),)),
    absent("messages.1.tools.0.id", before=(("messages", TOOL_HISTORY),)),
    absent("messages.1.tools.0.name", before=(("messages", TOOL_HISTORY),)),
    bad(
        "messages.1.tools.0.input", '{"city": "Paris"}', "not-an-object", before=(("messages", TOOL_HISTORY),)
    ),
    unknown("messages.1.tools.0.arguments", before=(("messages", TOOL_HISTORY),)),
    # -- settings ------------------------------------------------------------------------------
    bad("settings", "fast", "not-an-object"),
    bad("settings", None, "null"),
    unknown("settings.toolChoice"),
    unknown("settings.seed"),
    unknown("temperature"),  # a setting at the top level, where it does not belong
    *_floats("temperature", 0, 2, 0.005),
    bad("settings.temperature", float("inf"), "infinite"),
    bad("settings.temperature", None, "null"),
    *_floats("topP", 0.01, 1, 0.555),
    bad("settings.topP", 0, "exclusive-minimum-0"),
    bad("settings.topP", -0.5, "negative"),
    *_floats("minP", 0, 1, 0.123),
    *_floats("frequencyPenalty", -2, 2, 0.001),
    *_floats("presencePenalty", -2, 2, 1.005),
    *_floats("repetitionPenalty", 0.01, 5, 1.234),
    bad("settings.repetitionPenalty", 0, "zero"),
    bad("settings.maxTokens", 0, "below-min"),
    bad("settings.maxTokens", 1_000_001, "above-max"),
    bad("settings.maxTokens", 1.5, "not-an-integer"),
    bad("settings.maxTokens", True, "bool-as-number"),
    bad("settings.maxTokens", "8", "string-as-number"),
    bad("settings.topK", -1, "below-min"),
    bad("settings.topK", 1000, "above-max"),
    bad("settings.topK", 2.5, "not-an-integer"),
    bad("settings.topK", "40", "string-as-number"),
    bad("settings.systemPrompt", "", "empty"),
    bad("settings.systemPrompt", "x" * 50_001, "above-max-length"),
    bad("settings.systemPrompt", 42, "not-a-string"),
    bad("settings.promptCacheKey", 42, "not-a-string"),
    bad("settings.stopSequences", ["."] * 17, "too-many"),
    bad("settings.stopSequences", "\n", "not-an-array"),
    bad("settings.stopSequences", [""], "empty-item", parameter="settings.stopSequences.0"),
    bad("settings.stopSequences", ["a", 5], "item-not-a-string", parameter="settings.stopSequences.1"),
    bad("settings.thinkingLevel", "max", "not-in-enum"),
    bad("settings.thinkingLevel", "High", "enum-is-case-sensitive"),
    bad("settings.thinkingLevel", True, "bool"),
    # -- top-level options ---------------------------------------------------------------------
    bad("seed", -1, "below-min"),
    bad("seed", SEED_MAX + 1, "above-max"),
    bad("seed", 1.5, "not-an-integer"),
    bad("seed", "42", "string-as-number"),
    bad("seed", False, "bool-as-number"),
    bad("seed", None, "null"),
    bad("numberResults", 0, "below-min"),
    bad("numberResults", 5, "above-max"),
    bad("numberResults", True, "bool-as-number"),
    bad("numberResults", "2", "string-as-number"),
    bad("deliveryMethod", "batch", "not-in-enum"),
    bad("deliveryMethod", "SYNC", "enum-is-case-sensitive"),
    bad("outputFormat", "JSON", "not-in-enum"),
    bad("outputFormat", "text", "enum-is-case-sensitive"),
    bad("includeCost", 1, "number-as-bool"),
    bad("includeCost", "true", "string-as-bool"),
    bad("includeUsage", 0, "number-as-bool"),
    bad("includeUsage", "false", "string-as-bool"),
    bad("webhookURL", "not a url", "not-a-uri"),
    bad("webhookURL", "example.com/hook", "no-scheme"),
    bad("webhookURL", "ftp://example.com/hook", "not-http"),
    bad("webhookURL", 80, "not-a-string"),
    bad("providerSettings", "google", "not-an-object"),
    unknown("ttl"),
    unknown("positivePrompt"),
    # -- inputs --------------------------------------------------------------------------------
    bad("inputs", ["https://example.com/a.png"], "not-an-object"),
    unknown("inputs.audio"),
    bad("inputs.images", [], "empty"),
    bad("inputs.images", "https://example.com/a.png", "not-an-array"),
    bad("inputs.images", ["not a valid image!"], "bad-item", parameter="inputs.images.0"),
    bad("inputs.images", [UUID_V4, ""], "empty-item", parameter="inputs.images.1"),
    bad("inputs.images", [7], "item-not-a-string", parameter="inputs.images.0"),
    bad("inputs.videos", [], "empty"),
    bad("inputs.videos", ["AAAA"], "base64-is-not-a-video-ref", parameter="inputs.videos.0"),
    bad("inputs.videos", ["not a video"], "bad-item", parameter="inputs.videos.0"),
    bad("inputs.documents", [], "empty"),
    bad("inputs.documents", [3], "item-not-a-string", parameter="inputs.documents.0"),
    # -- tools ---------------------------------------------------------------------------------
    bad("tools", [], "empty"),
    bad("tools", WEATHER_TOOL, "not-an-array"),
    absent("tools.0.type", before=WITH_TOOL),
    bad("tools.0.type", "retrieval", "not-in-enum", before=WITH_TOOL),
    bad("tools.0.type", "Function", "enum-is-case-sensitive", before=WITH_TOOL),
    absent("tools.0.name", before=WITH_TOOL),
    absent("tools.0.schema", before=WITH_TOOL),
    bad("tools.0.name", "get weather", "pattern", before=WITH_TOOL),
    bad("tools.0.name", "get.weather", "pattern-dot", before=WITH_TOOL),
    bad("tools.0.name", "", "empty", before=WITH_TOOL),
    bad("tools.0.name", "f" * 65, "above-max-length", before=WITH_TOOL),
    bad("tools.0.schema", '{"type": "object"}', "not-an-object", before=WITH_TOOL),
    bad("tools.0.description", 3, "not-a-string", before=WITH_TOOL),
    unknown("tools.0.parameters", before=WITH_TOOL),  # the OpenAI spelling of `schema`
    # -- toolChoice ----------------------------------------------------------------------------
    bad("toolChoice", "auto", "not-an-object"),
    absent("toolChoice.type", before=(("toolChoice", {"type": "auto"}),)),
    bad("toolChoice.type", "required", "not-in-enum"),
    absent("toolChoice.name", before=(*WITH_TOOL, ("toolChoice", {"type": "tool"}))),
    Case(
        "toolChoice.name:tool-without-name-and-no-tools",
        (("toolChoice", {"type": "tool"}),),
        "missingName",
        "toolChoice.name",
    ),
    bad(
        "toolChoice.name",
        "get_time",
        "not-a-defined-tool",
        before=(*WITH_TOOL, ("toolChoice", {"type": "tool"})),
    ),
    bad("toolChoice.name", 5, "not-a-string", before=(("toolChoice", {"type": "tool"}),)),
    unknown("toolChoice.function", before=(("toolChoice", {"type": "auto"}),)),
]

ACCEPTS: Final[list[Case]] = [
    ok("minimal"),
    # JSON has one number type: a whole number written as a float is that integer (README: Hostile input)
    ok("maxTokens:float-for-integer", ("settings.maxTokens", 8.0)),
    ok("numberResults:float-for-integer", ("numberResults", 2.0)),
    ok("no-settings", ("settings", DELETE)),
    ok("empty-settings", ("settings", {})),
    ok("model:docs-page-id", ("model", "moonshotai-kimi-k2-6")),
    ok("model:other-id", ("model", "some-other-model")),  # resolution is the registry's job
    ok("taskUUID:upper-case", ("taskUUID", FRESH_UPPER_UUID)),
    ok("taskUUID:version-1", ("taskUUID", FRESH_V1_UUID)),
    ok("settings.temperature:min", ("settings.temperature", 0)),
    ok("settings.temperature:max", ("settings.temperature", 2)),
    ok("settings.temperature:float-max", ("settings.temperature", 2.0)),
    ok("settings.temperature:0.07", ("settings.temperature", 0.07)),
    ok("settings.temperature:1.15", ("settings.temperature", 1.15)),
    ok("settings.topP:min", ("settings.topP", 0.01)),
    ok("settings.topP:max", ("settings.topP", 1)),
    ok("settings.minP:min", ("settings.minP", 0)),
    ok("settings.minP:max", ("settings.minP", 1)),
    ok("settings.frequencyPenalty:min", ("settings.frequencyPenalty", -2)),
    ok("settings.frequencyPenalty:max", ("settings.frequencyPenalty", 2)),
    ok("settings.presencePenalty:min", ("settings.presencePenalty", -2)),
    ok("settings.presencePenalty:max", ("settings.presencePenalty", 2)),
    ok("settings.presencePenalty:-0.29", ("settings.presencePenalty", -0.29)),
    ok("settings.repetitionPenalty:min", ("settings.repetitionPenalty", 0.01)),
    ok("settings.repetitionPenalty:max", ("settings.repetitionPenalty", 5)),
    ok("settings.maxTokens:min", ("settings.maxTokens", 1)),
    ok("settings.maxTokens:max", ("settings.maxTokens", 1_000_000), tags=("slow",)),
    ok("settings.topK:min", ("settings.topK", 0)),
    ok("settings.topK:max", ("settings.topK", 999)),
    ok("settings.stopSequences:16", ("settings.stopSequences", [f"<stop{i}>" for i in range(16)])),
    ok("settings.stopSequences:empty", ("settings.stopSequences", [])),
    ok("settings.systemPrompt:1-char", ("settings.systemPrompt", "x")),
    ok("settings.systemPrompt:50000-chars", ("settings.systemPrompt", "x" * 50_000)),
    ok("settings.promptCacheKey", ("settings.promptCacheKey", "session-42")),
    ok("settings.thinkingLevel:none", ("settings.thinkingLevel", "none")),
    *(
        ok(f"settings.thinkingLevel:{v}", ("settings.thinkingLevel", v), tags=("thinking",))
        for v in ("low", "medium", "high", "xhigh")
    ),
    ok("seed:min", ("seed", 0)),
    ok("seed:max", ("seed", SEED_MAX)),
    ok("seed:uint32", ("seed", 4_294_967_295)),
    ok("numberResults:min", ("numberResults", 1)),
    ok("numberResults:max", ("numberResults", 4), tags=("many",)),
    ok("deliveryMethod:sync", ("deliveryMethod", "sync")),
    ok("deliveryMethod:async", ("deliveryMethod", "async"), tags=("async",)),
    ok("deliveryMethod:stream", ("deliveryMethod", "stream"), tags=("stream",)),
    ok("outputFormat:TEXT", ("outputFormat", "TEXT")),
    ok("includeCost+includeUsage", ("includeCost", True), ("includeUsage", True)),
    ok("includeCost:false", ("includeCost", False), ("includeUsage", False)),
    ok("webhookURL", ("webhookURL", "https://example.com/hooks/runware?x=1"), tags=("webhook",)),
    ok("providerSettings", ("providerSettings", {"google": {"search": True}}), tags=("provider",)),
    ok(
        "multi-turn",
        (
            "messages",
            [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Say hello again."},
            ],
        ),
    ),
    # The SDK's tool forms.
    ok("sdk:tool-history", ("messages", TOOL_HISTORY), ("tools", [WEATHER_TOOL]), tags=("tools",)),
    ok(
        "sdk:tool-call-without-input",
        (
            "messages",
            [
                {"role": "user", "content": "Time?"},
                {"role": "assistant", "tools": [{"id": "c", "name": "now"}]},
                {"role": "tool", "id": "c", "content": "12:00"},
            ],
        ),
        tags=("tools",),
    ),
    ok(
        "sdk:assistant-content-and-tools",
        (
            "messages",
            [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tools": [{"id": "c", "name": "w", "input": {}}],
                },
                {"role": "tool", "id": "c", "content": ""},
            ],
        ),
        tags=("tools",),
    ),
    ok("tools:function", ("tools", [WEATHER_TOOL]), tags=("tools",)),
    ok(
        "tools:function-empty-schema",
        ("tools", [{"type": "function", "name": "ping", "schema": {}}]),
        tags=("tools",),
    ),
    ok(
        "tools:name-64-chars",
        ("tools", [{"type": "function", "name": "a-_9" * 16, "schema": {}}]),
        tags=("tools",),
    ),
    ok("tools:search", ("tools", [{"type": "search"}]), tags=("tools",)),
    ok("tools:codeInterpreter", ("tools", [{"type": "codeInterpreter"}]), tags=("tools",)),
    *(
        ok(f"toolChoice:{t}", ("tools", [WEATHER_TOOL]), ("toolChoice", {"type": t}), tags=("tools",))
        for t in ("auto", "any", "none")
    ),
    ok(
        "toolChoice:tool",
        ("tools", [WEATHER_TOOL]),
        ("toolChoice", {"type": "tool", "name": "get_weather"}),
        tags=("tools",),
    ),
    # Inputs, each form the seed's anyOf allows.
    ok("inputs:empty", ("inputs", {}), tags=("inputs",)),
    ok("inputs.images:uuid", ("inputs.images", [UUID_V4]), tags=("inputs",)),
    ok("inputs.images:url", ("inputs.images", ["https://example.com/cat.png"]), tags=("inputs",)),
    ok("inputs.images:data-uri", ("inputs.images", [f"data:image/png;base64,{PNG_B64}"]), tags=("inputs",)),
    ok("inputs.images:base64", ("inputs.images", [PNG_B64]), tags=("inputs",)),
    ok(
        "inputs.videos:uuid+url",
        ("inputs.videos", [UUID_V4, "https://example.com/clip.mp4"]),
        tags=("inputs",),
    ),
    ok("inputs.documents", ("inputs.documents", ["https://example.com/a.pdf"]), tags=("inputs",)),
    # Everything the SDK sends by default, spelled out.
    ok("sdk:defaults", ("deliveryMethod", "sync"), ("numberResults", 1), ("includeCost", True)),
]
