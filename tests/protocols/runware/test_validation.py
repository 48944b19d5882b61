"""The validation table against `parse_task`, with no server; plus the other task types."""

from __future__ import annotations

import copy
import uuid
from collections import Counter
from typing import Any

import pytest

from kimiserve.errors import InvalidRequest
from kimiserve.protocols.runware.models import (
    AuthenticationTask,
    GetResponseTask,
    GetTaskDetailsTask,
    ImageUploadTask,
    PingTask,
    TextInferenceTask,
)
from kimiserve.protocols.runware.validation import parse_task, task_type_of, task_uuid_of
from tests.protocols.runware.validation_cases import (
    ACCEPTS,
    DELETE,
    FRESH_UPPER_UUID,
    FRESH_V1_UUID,
    PNG_B64,
    REJECTS,
    TASK_UUID,
    UUID_V4,
    VALID_TASK,
    Case,
    apply,
)


def reject(task: object) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_task(task)
    return info.value


@pytest.mark.parametrize("case", REJECTS, ids=lambda c: c.name)
def test_rejects(case: Case) -> None:
    err = reject(case.task())
    assert (err.code, err.parameter, err.status) == (case.code, case.parameter, case.status), err.message
    assert err.message.startswith(f"{case.parameter} "), err.message
    assert len(err.message) < 200, "a message must not echo a long value"


@pytest.mark.parametrize("case", ACCEPTS, ids=lambda c: c.name)
def test_accepts(case: Case) -> None:
    task = case.task()
    parsed = parse_task(task)
    assert isinstance(parsed, TextInferenceTask)
    assert parsed.taskUUID == task["taskUUID"]


def test_table_is_well_formed() -> None:
    names = Counter(c.name for c in [*REJECTS, *ACCEPTS])
    assert [n for n, k in names.items() if k > 1] == []
    for case in REJECTS:
        assert case.code and case.parameter and case.status == 400
        assert case.code.startswith(("missing", "invalid", "unsupported")), case.name
    assert all(c.code is None for c in ACCEPTS)


def test_task_builds_a_fresh_uuid_unless_the_case_sets_one() -> None:
    case = ACCEPTS[0]
    assert case.task()["taskUUID"] != case.task()["taskUUID"]
    assert case.task("6fa459ea-ee8a-11ca-9b2b-0800200c9a66")["taskUUID"].startswith("6fa459ea")
    pinned = Case("pinned", (("taskUUID", TASK_UUID.upper()),))
    assert pinned.task()["taskUUID"] == TASK_UUID.upper()
    assert "taskUUID" not in Case("gone", (("taskUUID", DELETE),)).task()
    assert VALID_TASK["taskUUID"] == TASK_UUID, "building a case must not change VALID_TASK"
    upper = Case("upper", (("taskUUID", FRESH_UPPER_UUID),))
    first, second = upper.task()["taskUUID"], upper.task()["taskUUID"]
    assert first != second and first == first.upper()
    assert uuid.UUID(Case("v1", (("taskUUID", FRESH_V1_UUID),)).task()["taskUUID"]).version == 1


def test_apply_creates_parents_appends_and_deletes() -> None:
    task: dict[str, Any] = {"messages": [{"role": "user"}]}
    apply(task, "inputs.images", ["x"])
    apply(task, "messages.1", {"role": "assistant"})
    apply(task, "messages.0.role", DELETE)
    assert task == {"messages": [{}, {"role": "assistant"}], "inputs": {"images": ["x"]}}


# ---- messages state the rule -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("settings.temperature", 2.5, "settings.temperature must be ≤ 2 (got 2.5)"),
        ("settings.temperature", 0.333, "settings.temperature must be a multiple of 0.01 (got 0.333)"),
        ("settings.topP", 0, "settings.topP must be > 0 (got 0)"),
        ("settings.repetitionPenalty", 0, "settings.repetitionPenalty must be ≥ 0.01 (got 0)"),
        ("settings.maxTokens", "8", 'settings.maxTokens must be an integer (got "8")'),
        ("numberResults", 5, "numberResults must be ≤ 4 (got 5)"),
        ("includeCost", 1, "includeCost must be true or false (got 1)"),
        (
            "settings.systemPrompt",
            "x" * 50_001,
            "settings.systemPrompt must be at most 50000 characters (got 50001)",
        ),
        ("settings.stopSequences", ["."] * 17, "settings.stopSequences must have at most 16 items (got 17)"),
        ("messages", [], "messages must have at least 1 item (got 0)"),
        ("messages.0.content", "", "messages.0.content must not be empty"),
        ("model", DELETE, "model is required"),
        ("seed", None, "seed must not be null"),
        ("outputFormat", "PNG", "outputFormat must be 'TEXT' (got \"PNG\")"),
        ("settings.extra", 1, "settings.extra is not a supported parameter"),
    ],
)
def test_message_states_the_bound(path: str, value: Any, message: str) -> None:
    assert reject(Case("m", ((path, value),)).task()).message == message


def test_first_error_wins_in_field_order() -> None:
    task = copy.deepcopy(VALID_TASK)
    task["taskUUID"] = "nope"
    task["settings"] = {"temperature": 9}
    task["surprise"] = True
    for _ in range(3):
        assert reject(task).parameter == "taskUUID"
    del task["taskUUID"]
    assert reject(task).code == "missingTaskUUID"


# ---- dispatch on taskType --------------------------------------------------------------------


@pytest.mark.parametrize("raw", [[], "task", 3, None])
def test_a_task_must_be_an_object(raw: object) -> None:
    err = reject(raw)
    assert (err.code, err.status) == ("invalidTask", 400)


def test_task_type_missing_unknown_or_not_a_string() -> None:
    assert (reject({"taskUUID": UUID_V4}).code, reject({}).parameter) == ("missingTaskType", "taskType")
    unknown = reject({"taskType": "imageInference", "taskUUID": UUID_V4})
    assert (unknown.code, unknown.parameter, unknown.status) == ("unsupportedTaskType", "taskType", 400)
    assert reject({"taskType": ["ping"]}).code == "invalidTaskType"


def test_stamping_helpers_read_raw_tasks() -> None:
    raw = {"taskType": "textInference", "taskUUID": "not-a-uuid"}
    assert (task_type_of(raw), task_uuid_of(raw)) == ("textInference", "not-a-uuid")
    assert (task_type_of({"taskType": 5}), task_uuid_of({"taskUUID": 5})) == (None, None)
    assert (task_type_of([]), task_uuid_of("x")) == (None, None)


# ---- the other task types, as the SDK sends them ---------------------------------------------


@pytest.mark.parametrize(
    ("raw", "model"),
    [
        ({"taskType": "authentication", "apiKey": "k"}, AuthenticationTask),
        ({"taskType": "authentication", "apiKey": "k", "connectionSessionUUID": UUID_V4}, AuthenticationTask),
        ({"taskType": "getResponse", "taskUUID": UUID_V4}, GetResponseTask),
        ({"taskType": "getTaskDetails", "taskUUID": UUID_V4}, GetTaskDetailsTask),
        (
            {"taskType": "imageUpload", "taskUUID": UUID_V4, "image": f"data:image/png;base64,{PNG_B64}"},
            ImageUploadTask,
        ),
        (
            {"taskType": "imageUpload", "taskUUID": UUID_V4, "image": "https://example.com/a.png"},
            ImageUploadTask,
        ),
        ({"taskType": "ping", "ping": True}, PingTask),
    ],
)
def test_other_task_types_accept_what_the_sdk_sends(raw: dict[str, Any], model: type) -> None:
    assert isinstance(parse_task(raw), model)


@pytest.mark.parametrize(
    ("raw", "code", "parameter"),
    [
        ({"taskType": "authentication"}, "missingApiKey", "apiKey"),
        ({"taskType": "authentication", "apiKey": 5}, "invalidApiKey", "apiKey"),
        (
            {"taskType": "authentication", "apiKey": "k", "connectionSessionUUID": "x"},
            "invalidConnectionSessionUUID",
            "connectionSessionUUID",
        ),
        (
            {"taskType": "authentication", "apiKey": "k", "taskUUID": UUID_V4},
            "unsupportedParameter",
            "taskUUID",
        ),
        ({"taskType": "getResponse"}, "missingTaskUUID", "taskUUID"),
        ({"taskType": "getResponse", "taskUUID": "abc"}, "invalidTaskUUID", "taskUUID"),
        ({"taskType": "getTaskDetails", "taskUUID": 7}, "invalidTaskUUID", "taskUUID"),
        ({"taskType": "imageUpload", "taskUUID": UUID_V4}, "missingImage", "image"),
        ({"taskType": "imageUpload", "taskUUID": UUID_V4, "image": "not an image"}, "invalidImage", "image"),
        ({"taskType": "ping", "ping": "yes"}, "invalidPing", "ping"),
        ({"taskType": "ping"}, "missingPing", "ping"),
    ],
)
def test_other_task_types_reject(raw: dict[str, Any], code: str, parameter: str) -> None:
    err = reject(raw)
    assert (err.code, err.parameter, err.status) == (code, parameter, 400)
