"""The hostile-input table for the Messages API (issue 19), sync and stream: every case is
refused in Anthropic's error shape naming the location (or, at a bound, accepted): never a 5xx,
never a non-JSON body. A key without the inference scope is refused with permission_error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.clients import KIMI, Seen, post
from tests.hostile.test_input_table import BAD, NUL, RAW_BODIES, SURROGATE
from tests.serverproc import ServerProcess, create_key

PATHS = ["/v1/messages", "/v1/messages/count_tokens"]


def ask(content: Any = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": KIMI, "max_tokens": 4, "messages": [{"role": "user", "content": content}], **extra}


FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("content", ask(f"hi {BAD}"), "messages.0.content"),
    ("text block", ask([{"type": "text", "text": BAD}]), "messages.0.content.0.text"),
    ("system", ask(system=BAD), "system"),
    ("model", ask() | {"model": BAD}, "model"),
    ("stop_sequences", ask(stop_sequences=[BAD]), "stop_sequences.0"),
    ("tool name", ask(tools=[{"name": BAD, "input_schema": {"type": "object"}}]), "tools.0.name"),
    ("unknown key", ask(zzz=BAD), "zzz"),
    ("metadata", ask(metadata={"user_id": BAD}), "metadata.user_id"),
]


def assert_refused(
    seen: Seen, where: str | None, status: int = 400, kind: str = "invalid_request_error"
) -> None:
    assert seen.status == status, seen
    [body] = seen.frames
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == kind, body
    assert body["request_id"].startswith("req_"), body
    if where is not None:
        assert body["error"]["message"].startswith(where), body


@pytest.mark.parametrize("stream", [False, True], ids=["sync", "stream"])
@pytest.mark.parametrize("escape", [SURROGATE, NUL], ids=["surrogate", "nul"])
@pytest.mark.parametrize(("name", "body", "where"), FIELDS, ids=[f[0] for f in FIELDS])
def test_bad_text_in_every_string_field(
    fake_server: ServerProcess,
    keys: dict[str, str],
    stream: bool,
    escape: str,
    name: str,
    body: Any,
    where: str,
) -> None:
    text = json.dumps({**body, "stream": stream}).replace(BAD, escape)
    assert_refused(post(fake_server.base_url, "/v1/messages", text, keys["alice"]), where)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("name", "body", "status", "code"), RAW_BODIES, ids=[b[0] for b in RAW_BODIES])
def test_raw_bodies(
    fake_server: ServerProcess,
    keys: dict[str, str],
    path: str,
    name: str,
    body: bytes,
    status: int,
    code: str,
) -> None:
    kind = "request_too_large" if status == 413 else "invalid_request_error"
    assert_refused(post(fake_server.base_url, path, body, keys["alice"]), None, status, kind)


BOUNDS: list[tuple[str, Any, bool]] = [
    ("temperature", 0, True),
    ("temperature", 1, True),
    ("temperature", 1.01, False),
    ("temperature", -0.01, False),
    ("top_p", 1, True),
    ("top_p", 1.01, False),
    ("top_k", 0, True),
    ("top_k", -1, False),
    ("max_tokens", 1, True),
    ("max_tokens", 0, False),
    ("stop_sequences", ["s"] * 16, True),
    ("stop_sequences", ["s"] * 17, False),
    ("thinking", {"type": "enabled", "budget_tokens": 1023}, False),
]


@pytest.mark.parametrize("stream", [False, True], ids=["sync", "stream"])
@pytest.mark.parametrize(("field", "value", "valid"), BOUNDS, ids=[f"{f}={v}"[:40] for f, v, _ in BOUNDS])
def test_numbers_at_and_past_bounds(
    fake_server: ServerProcess, keys: dict[str, str], stream: bool, field: str, value: Any, valid: bool
) -> None:
    seen = post(
        fake_server.base_url, "/v1/messages", json.dumps(ask(**{field: value}, stream=stream)), keys["alice"]
    )
    if not valid:
        assert_refused(seen, field)
    elif stream:
        assert seen.status == 200 and seen.frames[-1] == {"type": "message_stop"}, seen
    else:
        assert seen.status == 200 and seen.frames[0]["type"] == "message", seen


@pytest.mark.parametrize("path", PATHS)
def test_scopes_and_keys(fake_server: ServerProcess, hostile_dir: Path, path: str) -> None:
    reader = create_key(hostile_dir, "alice", "reader", "--scopes", "tasks:read")
    assert_refused(post(fake_server.base_url, path, json.dumps(ask()), reader), None, 403, "permission_error")
    assert_refused(
        post(fake_server.base_url, path, json.dumps(ask()), "sk-nope"), None, 401, "authentication_error"
    )
    assert_refused(
        post(fake_server.base_url, path, json.dumps(ask()), None), None, 401, "authentication_error"
    )
