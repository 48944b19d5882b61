"""Tool-call arguments validated against the declared JSON Schema (jsonschema).

Moonshot's K2 Vendor Verifier measured 87% schema accuracy for K2 tool calls on vLLM and 96% on
SGLang; a call that does not validate never reaches the client: the engine re-asks once for the
turn's invalid calls (its valid ones stand; each call is checked against its own tool's schema),
then fails with an error naming the call.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs installed; used through two calls

from kimiserve.domain.types import ToolCall, ToolSpec


@lru_cache(maxsize=256)
def _validator(schema_text: str) -> Any:
    schema = json.loads(schema_text or "{}")
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def problem(call: ToolCall, tools: tuple[ToolSpec, ...]) -> str | None:
    """Why `call` is not a valid call of one of `tools`, or None when it is."""
    spec = next((t for t in tools if t.name == call.name), None)
    if spec is None:
        return f"{call.name!r} is not one of the declared tools"
    try:
        arguments = json.loads(call.arguments or "{}")
    except json.JSONDecodeError as exc:
        return f"the arguments of {call.name!r} are not JSON ({exc.msg})"
    if not isinstance(arguments, dict):
        return f"the arguments of {call.name!r} are not a JSON object"
    error = jsonschema.exceptions.best_match(_validator(spec.parameters).iter_errors(arguments))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return f"the arguments of {call.name!r} do not match its schema at {where}: {error.message}"
    return None
