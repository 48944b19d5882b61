"""The embedded llama.cpp engine on the real bundled model (SmolLM2-135M-Instruct Q4_1)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import pytest

from kimiserve.domain.types import (
    Constraint,
    Event,
    Finished,
    GenerationRequest,
    Message,
    Sampling,
    TextDelta,
    Usage,
)
from kimiserve.engines.base import Engine
from kimiserve.engines.llamacpp import LlamaCppConfig, LlamaCppEngine, default_model_path
from kimiserve.engines.llamacpp.stops import TextStream
from kimiserve.errors import (
    ContextLengthExceeded,
    EngineOverloaded,
    GrammarError,
    ModelLoadError,
    UnsupportedFeature,
)


@dataclass
class Result:
    deltas: list[str]
    usage: Usage
    finished: Finished

    @property
    def text(self) -> str:
        return "".join(self.deltas)


def ask(text: str, system: str | None = None, **sampling: object) -> GenerationRequest:
    messages = (Message("system", system),) if system else ()
    return GenerationRequest(
        model="smollm2",
        messages=(*messages, Message("user", text)),
        sampling=Sampling(**sampling),  # type: ignore[arg-type]
    )


async def run(engine: LlamaCppEngine, request: GenerationRequest) -> Result:
    events: list[Event] = [event async for event in engine.generate(request)]
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    usages = [e for e in events if isinstance(e, Usage)]
    finished = [e for e in events if isinstance(e, Finished)]
    assert len(usages) == 1 and len(finished) == 1, events
    assert events[-2:] == [usages[0], finished[0]], "Usage then Finished must come last"
    return Result(deltas, usages[0], finished[0])


async def wait_idle(engine: LlamaCppEngine) -> None:
    for _ in range(200):
        if engine.active_sequences == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the engine did not become idle")


STORY = "Write a short story about a lighthouse keeper and a seagull."


def test_engine_protocol_and_capabilities(engine: LlamaCppEngine) -> None:
    assert isinstance(engine, Engine)
    caps = engine.capabilities
    assert caps.context_length == 512
    assert (caps.thinking, caps.tools, caps.vision, caps.max_concurrency) == (
        "budgeted",  # a <think> section the engine closes when the level's budget is spent
        "constrained",  # calls generated under a grammar from the tools' schemas
        False,
        8,
    )
    assert default_model_path().endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


async def test_health(engine: LlamaCppEngine) -> None:
    assert (await engine.health()).ok


async def test_same_seed_same_text(engine: LlamaCppEngine) -> None:
    request = ask(STORY, temperature=0.9, top_p=0.95, seed=1234, max_tokens=40)
    first = await run(engine, request)
    second = await run(engine, request)
    assert first.text == second.text
    assert second.usage.cached_tokens > 0  # the second run reused the prompt's KV
    other = await run(engine, replace(request, sampling=replace(request.sampling, seed=99)))
    assert other.text != first.text


async def test_same_seed_same_text_beside_seven_others(engine: LlamaCppEngine) -> None:
    target = ask(STORY, temperature=1.0, top_k=40, min_p=0.05, repetition_penalty=1.1, seed=7, max_tokens=40)
    alone = await run(engine, target)
    long_text = " ".join(f"Item {i} is a small blue box." for i in range(32))  # ~300 tokens
    others = [
        ask(
            long_text if i % 2 else f"List {i + 2} fruits.",
            temperature=0.8,
            seed=i,
            max_tokens=30,
            ignore_eos=True,
        )
        for i in range(7)
    ]
    started = [asyncio.Event() for _ in others]

    async def other(request: GenerationRequest, first_token: asyncio.Event) -> None:
        async for _ in engine.generate(request):
            first_token.set()

    tasks = [asyncio.create_task(other(o, e)) for o, e in zip(others, started, strict=True)]
    await started[0].wait()  # the others are mid-prompt or mid-generation when the target joins
    beside = await run(engine, target)
    await asyncio.gather(*tasks)
    assert beside.text == alone.text


async def test_max_tokens_finishes_with_length(engine: LlamaCppEngine) -> None:
    result = await run(engine, ask(STORY, temperature=0.7, seed=3, max_tokens=5, ignore_eos=True))
    assert result.finished.reason == "length"
    assert result.usage.completion_tokens == 5
    assert result.usage.prompt_tokens > 10
    assert result.usage.reasoning_tokens == 0


async def test_ends_with_stop_at_eos(engine: LlamaCppEngine) -> None:
    result = await run(engine, ask("Say just the word hello.", temperature=0, max_tokens=60))
    assert result.finished.reason == "stop"
    assert "hello" in result.text.lower()


async def test_stop_string_split_across_tokens_is_cut(engine: LlamaCppEngine) -> None:
    request = ask(STORY, temperature=0, max_tokens=40)
    free = await run(engine, request)
    # Without stop strings every token is one delta: build a stop string spanning two tokens.
    spans = [
        (i, free.deltas[i][-2:] + free.deltas[i + 1][:2])
        for i in range(3, len(free.deltas) - 1)
        if len(free.deltas[i]) >= 3 and len(free.deltas[i + 1]) >= 3
    ]
    index, stop = next(
        (i, s) for i, s in spans if free.text.find(s) == len("".join(free.deltas[: i + 1])) - 2
    )
    stopped = await run(
        engine, replace(request, sampling=replace(request.sampling, stop=("@@never@@", stop)))
    )
    assert stopped.finished.reason == "stop"
    assert stopped.text == "".join(free.deltas[: index + 1])[:-2]
    assert stop not in stopped.text


async def test_stop_string_in_one_token(engine: LlamaCppEngine) -> None:
    request = ask(STORY, temperature=0, max_tokens=40)
    free = await run(engine, request)
    word = free.deltas[5]
    stopped = await run(engine, replace(request, sampling=replace(request.sampling, stop=(word,))))
    assert stopped.text == free.text[: free.text.index(word)]
    assert stopped.finished.reason == "stop"


def test_text_stream_holds_back_partial_stops_and_utf8() -> None:
    stream = TextStream(("END",))
    assert stream.feed(b"abc E") == "abc "
    assert stream.feed(b"N") == ""
    assert stream.feed(b"x") == "ENx"
    snowman = "☃".encode()
    assert stream.feed(snowman[:1]) == ""
    assert stream.feed(snowman[1:]) == "☃"
    assert stream.feed(b" E") == " "
    assert stream.feed(b"ND tail") == ""
    assert stream.stopped
    tail = TextStream(("END",))
    assert tail.feed(b"the E") == "the "
    assert tail.feed(snowman[:2]) == ""
    assert tail.flush() == "E"  # the held-back stop prefix comes out, the half character does not


async def test_utf8_deltas_are_whole_characters(engine: LlamaCppEngine) -> None:
    # SmolLM2 spells each Hangul syllable with two tokens: half of them end mid-character.
    result = await run(engine, ask("Write a sentence in Korean.", temperature=0, max_tokens=21))
    assert result.usage.completion_tokens == 21
    assert len(result.deltas) < 15, result.deltas
    assert any(0xAC00 <= ord(ch) <= 0xD7A3 for ch in result.text), result.text
    for delta in result.deltas:
        assert "\ufffd" not in delta
        delta.encode("utf-8")


PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "role": {"type": "string", "enum": ["admin", "editor", "viewer"]},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}, "zip": {"type": "integer"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 2},
    },
    "required": ["name", "role", "address", "tags"],
    "additionalProperties": False,
}


async def test_json_schema_output_validates_on_20_seeds(engine: LlamaCppEngine) -> None:
    base = replace(
        ask("Describe a user of our website as JSON.", temperature=1.0, max_tokens=100),
        constraint=Constraint(json_schema=json.dumps(PERSON_SCHEMA)),
    )
    requests = [replace(base, sampling=replace(base.sampling, seed=seed)) for seed in range(20)]
    results = await asyncio.gather(*(run(engine, r) for r in requests))
    for result in results:
        assert result.finished.reason == "stop", result.text
        jsonschema.validate(json.loads(result.text), PERSON_SCHEMA)
    assert len({r.text for r in results}) > 10


async def test_gbnf_grammar_that_completes_finishes_with_stop(engine: LlamaCppEngine) -> None:
    request = replace(
        ask("Is the sky blue? Answer yes or no.", temperature=1.0, seed=11, max_tokens=20),
        constraint=Constraint(grammar='root ::= ("yes" | "no") "."'),
    )
    result = await run(engine, request)
    assert result.text in {"yes.", "no."}
    assert result.finished.reason == "stop"


@pytest.mark.parametrize(
    "constraint",
    [
        Constraint(grammar="root ::= ( unclosed"),
        Constraint(grammar='start ::= "x"'),  # no root rule
        Constraint(grammar="root ::= missing"),  # undefined rule
        Constraint(json_schema="{not json"),
        Constraint(json_schema='{"type": "object", "properties": {"a": {"$ref": "#/definitions/nope"}}}'),
    ],
)
async def test_bad_grammar_or_schema_is_rejected_before_start(
    engine: LlamaCppEngine, constraint: Constraint
) -> None:
    request = replace(ask("hi", max_tokens=5), constraint=constraint)
    with pytest.raises(GrammarError) as caught:
        await engine.check(request)
    assert caught.value.parameter == "constraint"
    with pytest.raises(GrammarError):  # generate refuses it too when check was skipped
        await engine.generate(request).__anext__()


async def test_cancelled_request_frees_its_slot(engine: LlamaCppEngine) -> None:
    stream = engine.generate(ask(STORY, temperature=0.8, seed=1, max_tokens=400, ignore_eos=True))
    seen = 0
    async for event in stream:
        if isinstance(event, TextDelta):
            seen += 1
            if seen == 3:
                break
    await stream.aclose()
    await wait_idle(engine)
    requests = [ask(f"Name {i + 1} colors.", temperature=0.8, seed=i, max_tokens=12) for i in range(8)]
    results = await asyncio.gather(*(run(engine, r) for r in requests))
    assert all(r.finished.reason in {"stop", "length"} for r in results)


async def test_cancelled_task_frees_its_slot(engine: LlamaCppEngine) -> None:
    async def consume() -> None:
        async for _ in engine.generate(ask(STORY, temperature=0.8, seed=2, max_tokens=400, ignore_eos=True)):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_idle(engine)


async def test_prompt_longer_than_context_is_rejected(engine: LlamaCppEngine) -> None:
    with pytest.raises(ContextLengthExceeded) as caught:
        await engine.check(ask("word " * 600, max_tokens=5))
    assert caught.value.parameter == "messages"
    with pytest.raises(ContextLengthExceeded):
        await engine.generate(ask("word " * 600, max_tokens=5)).__anext__()


async def test_prompt_plus_max_tokens_over_context_is_rejected(engine: LlamaCppEngine) -> None:
    with pytest.raises(ContextLengthExceeded) as caught:
        await engine.check(ask("hello", max_tokens=500))
    assert caught.value.parameter == "max_tokens"


async def test_without_max_tokens_runs_until_the_context_is_full(engine: LlamaCppEngine) -> None:
    result = await run(engine, ask("word " * 470, temperature=0.8, seed=1, ignore_eos=True))
    assert result.finished.reason == "length"
    assert result.usage.prompt_tokens + result.usage.completion_tokens == engine.capabilities.context_length


async def test_images_are_unsupported(engine: LlamaCppEngine) -> None:
    with pytest.raises(UnsupportedFeature) as caught:
        looking = Message("user", "what is this?", images=("https://example.com/a.png",))
        await engine.check(replace(ask("what is this?"), messages=(looking,)))
    assert caught.value.parameter == "images"


def test_non_gguf_file_is_a_model_load_error(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 definitely not a model")
    with pytest.raises(ModelLoadError, match="GGUF"):
        LlamaCppEngine(LlamaCppConfig(model_path=str(fake)))
    with pytest.raises(ModelLoadError, match="not found"):
        LlamaCppEngine(LlamaCppConfig(model_path=str(tmp_path / "missing.gguf")))


def test_truncated_gguf_is_a_model_load_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(Path(default_model_path()).read_bytes()[:100_000])
    with pytest.raises(ModelLoadError):
        LlamaCppEngine(LlamaCppConfig(model_path=str(broken)))


async def test_queue_beyond_max_waiting_is_overloaded() -> None:
    small = LlamaCppEngine(LlamaCppConfig(n_ctx=512, max_sequences=1, max_waiting=1))
    try:
        long = ask(STORY, temperature=0.8, seed=1, max_tokens=200, ignore_eos=True)
        first = small.generate(long)
        await first.__anext__()  # running
        second = small.generate(long)
        waiting = asyncio.create_task(second.__anext__())  # queued
        await asyncio.sleep(0.05)
        with pytest.raises(EngineOverloaded):
            await small.generate(long).__anext__()
        waiting.cancel()
        await first.aclose()
    finally:
        await small.aclose()
    assert not (await small.health()).ok
