"""Raw task object → validated wire model, or exactly one `InvalidRequest`.

The Runware error for a bad task names one parameter, so of pydantic's errors the first wins
(pydantic reports a model's fields in declaration order, then its unknown keys, so the choice
is deterministic). The error carries:

- `parameter`: the dotted path, e.g. `settings.temperature`, `messages.1.content`;
- `code`: `unsupportedParameter` for an unknown key, `missing<Param>` for an absent required
  field, `invalid<Param>` otherwise, where <Param> is the last non-numeric path segment with its
  first letter capitalised (`invalidTemperature`, `missingTaskUUID`, `invalidImages`);
- `message`: the path and the rule it broke, e.g. "settings.temperature must be ≤ 2 (got 2.5)".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from kimiserve.errors import InvalidRequest, UnsupportedFeature
from kimiserve.protocols.runware.models import MISSING, NULL, TASK_MODELS, UNSUPPORTED, Task

UNSUPPORTED_PARAMETER = "unsupportedParameter"
UNSUPPORTED_TASK_TYPE = "unsupportedTaskType"


def task_type_of(raw: object) -> str | None:
    """The task's `taskType` if it has a string one: for stamping errors of unparsed tasks."""
    value = raw.get("taskType") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


def task_uuid_of(raw: object) -> str | None:
    """The task's `taskUUID` as sent, valid or not, so the client can route the error."""
    value = raw.get("taskUUID") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


def parse_task(raw: object) -> Task:
    """Validate one task object of a request array against the model for its `taskType`."""
    if not isinstance(raw, dict):
        raise InvalidRequest(f"Each task must be a JSON object (got {_show(raw)}).", code="invalidTask")
    if "taskType" not in raw:
        raise InvalidRequest("taskType is required", code="missingTaskType", parameter="taskType")
    task_type = raw["taskType"]
    if not isinstance(task_type, str):
        raise InvalidRequest(
            f"taskType must be a string (got {_show(task_type)})",
            code="invalidTaskType",
            parameter="taskType",
        )
    model = TASK_MODELS.get(task_type)
    if model is None:
        supported = ", ".join(sorted(TASK_MODELS))
        raise UnsupportedFeature(
            f"taskType {task_type!r} is not supported; supported task types: {supported}",
            code=UNSUPPORTED_TASK_TYPE,
            parameter="taskType",
        )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise to_invalid_request(exc) from None


def to_invalid_request(exc: ValidationError) -> InvalidRequest:
    """The first of pydantic's errors as the one Runware error."""
    error = exc.errors(include_url=False)[0]
    path, value = _locate(error)
    parameter = ".".join(str(part) for part in path)
    kind = error["type"]
    if kind in ("extra_forbidden", UNSUPPORTED):
        code = UNSUPPORTED_PARAMETER
    elif kind in ("missing", MISSING):
        code = "missing" + _param_name(path)
    else:
        code = "invalid" + _param_name(path)
    return InvalidRequest(f"{parameter} {_rule(error, value)}", code=code, parameter=parameter or None)


def _locate(error: ErrorDetails) -> tuple[list[int | str], Any]:
    """The error's path, extended by the `field` a model-level check names, and the value there."""
    path: list[int | str] = list(error["loc"])
    value = error.get("input")
    field = (error.get("ctx") or {}).get("field")
    if isinstance(field, str):
        for part in field.split("."):
            path.append(part)
            value = value.get(part) if isinstance(value, dict) else None
    return path, value


def _param_name(path: Sequence[int | str]) -> str:
    for part in reversed(path):
        if isinstance(part, str) and part:
            return part[0].upper() + part[1:]
    return "Parameter"


def _rule(error: ErrorDetails, value: Any) -> str:
    """What the value must be, in words, with the bound and the offending value."""
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    got = f" (got {_show(value)})"
    if kind in (MISSING, "missing"):
        return "is required"
    if kind == NULL:
        return "must not be null"
    if kind == UNSUPPORTED:
        return error["msg"]
    match kind:
        case "extra_forbidden":
            return "is not a supported parameter"
        case "greater_than_equal":
            return f"must be ≥ {_num(ctx['ge'])}{got}"
        case "greater_than":
            return f"must be > {_num(ctx['gt'])}{got}"
        case "less_than_equal":
            return f"must be ≤ {_num(ctx['le'])}{got}"
        case "less_than":
            return f"must be < {_num(ctx['lt'])}{got}"
        case "multiple_of":
            return f"must be a multiple of {_num(ctx['multiple_of'])}{got}"
        case "string_too_short":
            if ctx.get("min_length") == 1:
                return "must not be empty"
            return f"must be at least {ctx['min_length']} characters (got {_length(value)})"
        case "string_too_long":
            return f"must be at most {ctx['max_length']} characters (got {_length(value)})"
        case "too_short":
            return f"must have at least {_items(ctx['min_length'])} (got {ctx.get('actual_length')})"
        case "too_long":
            return f"must have at most {_items(ctx['max_length'])} (got {ctx.get('actual_length')})"
        case "string_pattern_mismatch":
            return f"must match the pattern {ctx['pattern']}{got}"
        case "literal_error":
            expected = str(ctx["expected"])
            one_of = "one of " if " or " in expected else ""
            return f"must be {one_of}{expected}{got}"
        case "int_type" | "int_from_float" | "int_parsing":
            return f"must be an integer{got}"
        case "float_type" | "float_parsing":
            return f"must be a number{got}"
        case "finite_number":
            return "must be a finite number"
        case "bool_type" | "bool_parsing":
            return f"must be true or false{got}"
        case "string_type":
            return f"must be a string{got}"
        case "list_type":
            return f"must be an array{got}"
        case "dict_type" | "model_type" | "model_attributes_type":
            return f"must be an object{got}"
        case _:  # the checks of models.py, whose messages are already rules
            return f"{error['msg']}{got}"


def _num(bound: Any) -> str:
    if isinstance(bound, float) and bound.is_integer():
        return str(int(bound))
    return str(bound)


def _items(n: int) -> str:
    return "1 item" if n == 1 else f"{n} items"


def _length(value: Any) -> str:
    return str(len(value)) if isinstance(value, str) else "?"


def _show(value: Any, limit: int = 40) -> str:
    """The value as JSON, shortened: messages must not echo a 50,000-character prompt."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = [
    "UNSUPPORTED_PARAMETER",
    "UNSUPPORTED_TASK_TYPE",
    "parse_task",
    "task_type_of",
    "task_uuid_of",
    "to_invalid_request",
]
