"""ChunkReader on chunks as upstreams send them: logprobs carried with the content they cover."""

from __future__ import annotations

from kimiserve.domain.types import ReasoningDelta, TextDelta, TokenLogprob
from kimiserve.engines.openai_compat.stream import ChunkReader


def test_content_logprobs_read_and_null_bytes_filled() -> None:
    reader = ChunkReader()
    entry = {
        "token": "é",
        "logprob": -0.5,
        "bytes": None,  # vLLM may send null; the token's UTF-8 stands in
        "top_logprobs": [{"token": "e", "logprob": -1.0, "bytes": [101]}, {"token": "bad"}],
    }
    chunk = {"choices": [{"index": 0, "delta": {"content": "é"}, "logprobs": {"content": [entry]}}]}
    [delta] = reader.feed(chunk)
    assert delta == TextDelta("é", (TokenLogprob("é", -0.5, "é".encode(), (TokenLogprob("e", -1.0, b"e"),)),))


def test_no_logprobs_object_is_none_and_reasoning_keeps_none() -> None:
    reader = ChunkReader()
    plain = reader.feed({"choices": [{"index": 0, "delta": {"content": "a"}, "logprobs": None}]})
    assert plain == [TextDelta("a")]
    logprobs = {"content": [{"token": "x", "logprob": -0.1, "bytes": [120]}]}
    reasoning = reader.feed({"choices": [{"index": 0, "delta": {"reasoning": "x"}, "logprobs": logprobs}]})
    assert reasoning == [ReasoningDelta("x")]
