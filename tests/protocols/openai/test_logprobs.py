"""logprobs / top_logprobs on POST /v1/chat/completions, through the official openai SDK against a
real server on the embedded model.

`test_logprobs` and `test_logprobs_stream` are llama.cpp's own server tests
(ggml-org/llama.cpp `tools/server/tests/unit/test_chat_completion.py`), pointed at kimiserve: the
same request (system "Book", user "What is the best book", temperature 0, max_tokens 5,
logprobs with top_logprobs 10) and the same assertions, tightened where kimiserve promises more
(exactly 10 alternatives). One assertion differs: llama.cpp sends the first chunk's
`delta.content` as null, kimiserve as `""`, as OpenAI's API does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.protocols.openai.support import MODEL
from tests.serverproc import ServerProcess

BOOK: Any = [{"role": "system", "content": "Book"}, {"role": "user", "content": "What is the best book"}]


@pytest.fixture
def sync_client(server: ServerProcess, api_key: str) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{server.base_url}/v1", api_key=api_key, max_retries=0) as client:
        yield client


def test_logprobs(sync_client: OpenAI) -> None:
    res = sync_client.chat.completions.create(
        model=MODEL, temperature=0.0, messages=BOOK, max_tokens=5, logprobs=True, top_logprobs=10
    )
    output_text = res.choices[0].message.content
    aggregated_text = ""
    assert res.choices[0].logprobs is not None
    assert res.choices[0].logprobs.content is not None
    for token in res.choices[0].logprobs.content:
        aggregated_text += token.token
        assert token.logprob <= 0.0
        assert token.bytes is not None
        assert len(token.top_logprobs) == 10
    assert aggregated_text == output_text
    assert len(res.choices[0].logprobs.content) == 5  # max_tokens 5, all of them text


def test_logprobs_stream(sync_client: OpenAI) -> None:
    res = sync_client.chat.completions.create(
        model=MODEL,
        temperature=0.0,
        messages=BOOK,
        max_tokens=5,
        logprobs=True,
        top_logprobs=10,
        stream=True,
    )
    output_text = ""
    aggregated_text = ""
    for i, data in enumerate(res):
        if data.choices:
            choice = data.choices[0]
            if i == 0:
                # Check first role message for stream=True
                assert not choice.delta.content  # "" as OpenAI sends it (llama.cpp: null)
                assert choice.delta.role == "assistant"
            else:
                assert choice.delta.role is None
                if choice.finish_reason is None:
                    if choice.delta.content:
                        output_text += choice.delta.content
                    assert choice.logprobs is not None
                    assert choice.logprobs.content is not None
                    for token in choice.logprobs.content:
                        aggregated_text += token.token
                        assert token.logprob <= 0.0
                        assert token.bytes is not None
                        assert token.top_logprobs is not None
                        assert len(token.top_logprobs) == 10
    assert aggregated_text == output_text
    assert output_text


def test_streamed_logprobs_are_the_unstreamed_ones(sync_client: OpenAI) -> None:
    args: Any = {
        "model": MODEL,
        "messages": BOOK,
        "max_tokens": 12,
        "seed": 5,
        "logprobs": True,
        "top_logprobs": 3,
    }
    plain = sync_client.chat.completions.create(**args)
    assert plain.choices[0].logprobs is not None and plain.choices[0].logprobs.content is not None
    streamed = [
        token
        for chunk in sync_client.chat.completions.create(**args, stream=True)
        for choice in chunk.choices
        if choice.logprobs is not None and choice.logprobs.content is not None
        for token in choice.logprobs.content
    ]
    expected = plain.choices[0].logprobs.content
    assert [t.token for t in streamed] == [t.token for t in expected]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in expected])
    for token in expected:
        assert bytes(token.bytes or []).decode("utf-8", errors="replace") == token.token
        values = [t.logprob for t in token.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert sum(math.exp(v) for v in values) <= 1.0 + 1e-6


def test_wire_shape_refusal_and_logprobs_null_when_not_asked(server: ServerProcess, api_key: str) -> None:
    """The raw JSON: `message.refusal` is present and null (OpenAI's schema requires it), and
    `logprobs` is null unless asked; asked with no alternatives, `top_logprobs` is []."""
    url = f"{server.base_url}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"}
    plain = httpx.post(
        url, json={"model": MODEL, "messages": BOOK, "max_tokens": 3}, headers=headers, timeout=60
    )
    [choice] = plain.json()["choices"]
    assert "refusal" in choice["message"] and choice["message"]["refusal"] is None
    assert choice["logprobs"] is None
    asked = httpx.post(
        url,
        json={"model": MODEL, "messages": BOOK, "max_tokens": 3, "logprobs": True},
        headers=headers,
        timeout=60,
    )
    logprobs = asked.json()["choices"][0]["logprobs"]
    assert logprobs["refusal"] is None
    assert [entry["top_logprobs"] for entry in logprobs["content"]] == [[], [], []]


@pytest.mark.parametrize(
    "extra",
    [{"logprobs": True, "top_logprobs": 21}, {"logprobs": True, "top_logprobs": -1}, {"top_logprobs": 2}],
)
def test_top_logprobs_refused_by_name(sync_client: OpenAI, extra: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sync_client.chat.completions.create(model=MODEL, messages=BOOK, max_tokens=3, **extra)
    assert info.value.param == "top_logprobs"
