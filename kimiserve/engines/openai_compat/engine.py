"""UpstreamEngine: one OpenAI-compatible upstream behind the engine seam.

Always streams (`stream: true` + `stream_options.include_usage`), so time to first token is the
upstream's and a consumer that stops iterating closes the HTTP stream, which vLLM and SGLang take
as the request's cancellation. One pooled aiohttp session per upstream: keep-alive, at most
`max_concurrency` connections, connect and read (between chunks) timeouts.

Why aiohttp and not httpx (which kimiserve uses elsewhere): this client is the gateway's hot path,
and a streamed request through httpx took 0.94 ms alone and 1.4 ms at 32 concurrent (its pool
polls every idle connection's socket on each request), through aiohttp 0.31 and 0.14 ms
(`bench/upstream_client.py`, bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import Any, Literal

import aiohttp
import orjson

from kimiserve.domain.types import (
    Event,
    Finished,
    GenerationRequest,
    ReasoningDelta,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from kimiserve.engines.base import Capabilities, Health
from kimiserve.engines.openai_compat import budget, errors, repairs, tools
from kimiserve.engines.openai_compat.config import UpstreamConfig
from kimiserve.engines.openai_compat.stream import ChunkReader, SseData
from kimiserve.engines.openai_compat.wire import IdMap, build_body, kimi_id
from kimiserve.errors import EngineError, InvalidRequest, UnsupportedFeature

log = logging.getLogger(__name__)

JSON = {"Content-Type": "application/json"}
DRAIN_S = 1.0  # how long the end of a body may take after its `[DONE]`

REASK = (
    "Error: {problem}. Nothing was run. Call the tool again with arguments that are a JSON object "
    "matching its parameters schema."
)


_THINKING: dict[str, Literal["native", "none"]] = {"moonshot": "native", "openai": "none"}


class UpstreamEngine:
    def __init__(
        self, config: UpstreamConfig, *, api_key: str | None = None, name: str | None = None
    ) -> None:
        self.config = config
        self.name = name or f"upstream:{config.label}"
        self.capabilities = Capabilities(
            context_length=config.context_length,
            # vllm/sglang: levels' budgets enforced by kimiserve (budget.py); moonshot: on/off only.
            thinking="budgeted" if config.dialect in budget.FORCED else _THINKING[config.dialect],
            tools="native",
            vision=config.vision,
            max_concurrency=config.max_concurrency,
        )
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._url = config.base_url + "/chat/completions"
        self._session: aiohttp.ClientSession | None = None
        # Repairs made to this upstream's answers, by kind (repairs.py): `/metrics` reads them.
        self.repairs: Counter[str] = Counter()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pooled session, made on first use (aiohttp sessions belong to a running loop)."""
        if self._session is None:
            config = self.config
            connector = aiohttp.TCPConnector(
                limit=config.max_concurrency,
                # Below the 5 s idle timeout of uvicorn (vLLM's and SGLang's server), so an idle
                # connection is dropped here before the upstream closes it under a new request.
                keepalive_timeout=4.0,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self._headers,
                # `connect` bounds the wait for a pooled connection and its opening; `sock_read`
                # each silence between two reads of the body, not the whole answer.
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=config.connect_timeout_s + config.read_timeout_s,
                    sock_connect=config.connect_timeout_s,
                    sock_read=config.read_timeout_s,
                ),
                auto_decompress=False,
            )
        return self._session

    async def check(self, request: GenerationRequest) -> int | None:
        """What can be known without asking: media support. The prompt is bounded by the pipeline."""
        if not self.config.vision and request.images:
            raise UnsupportedFeature("This model does not accept images.", parameter="images")
        if not self.config.vision and request.videos:
            raise UnsupportedFeature("This model does not accept videos.", parameter="videos")
        return None

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Event, None]:
        await self.check(request)
        body, ids = build_body(request, self.config)
        limit = budget.reasoning_budget(request, self.config.dialect)
        forcing = budget.Forcing(limit or 0, self.config.dialect, request.sampling.max_tokens)
        reasoning: list[str] = []
        if limit is None:
            events = self._stream(body, forcing.first)
        else:
            events = self._within_budget(budget.with_running_usage(body), forcing)
        async for event in events:
            if isinstance(event, ReasoningDelta):
                reasoning.append(event.text)
            yield event
        answer = forcing.answer
        usage = forcing.usage()
        calls = self._answer_calls(answer, request, ids)
        if not calls and not answer.answered and answer.finish_reason() == "stop":
            answer = ChunkReader()
            async for event in self._reask_empty(body, request, "".join(reasoning), usage, answer):
                yield event
            usage = repairs.combined(usage, answer.usage or Usage(0, answer.produced))
            calls = self._answer_calls(answer, request, ids)
            if not calls and not answer.answered and answer.finish_reason() == "stop":
                error = EngineError(
                    "The model ended its turn without an answer or a tool call twice "
                    f"(upstream {self.config.label}).",
                    code="emptyAnswer",
                )
                error.settles_delivered = True  # its reasoning may have reached the client
                raise error
        bad = [(c, p) for c in calls if (p := tools.problem(c, request.tools)) is not None]
        if bad:
            log.warning(
                "upstream %s made %d invalid tool call(s); re-asking once", self.config.label, len(bad)
            )
            second = ChunkReader()
            async for _ in self._stream(self._reask_body(body, bad, ids), second):
                pass  # the text of a re-ask is not part of the answer: only its calls are taken
            # The turn's valid calls stand; the re-ask's calls take the invalid ones' place.
            valid = [c for c in calls if all(c is not b for b, _ in bad)]
            retried = self._answer_calls(second, request, ids)
            retry = second.usage or Usage(0, second.produced)
            usage = Usage(
                usage.prompt_tokens + retry.prompt_tokens,
                usage.completion_tokens + retry.completion_tokens,
                usage.cached_tokens + retry.cached_tokens,
                usage.reasoning_tokens + retry.reasoning_tokens,
            )
            still = [(c, p) for c in retried if (p := tools.problem(c, request.tools)) is not None]
            if still or not retried:
                problem = still[0][1] if still else "the model made no call when asked again"
                raise EngineError(
                    f"The model's tool call was invalid twice: {problem}.", code="invalidToolCall"
                )
            calls = valid + retried
        for call in calls:
            yield ToolCallEvent(call)
        yield usage
        yield Finished("tool_calls" if calls else answer.finish_reason())

    def _count(self, kind: str) -> None:
        self.repairs[kind] += 1
        log.info("upstream %s: repaired %s", self.config.label, kind)

    async def _reask_empty(
        self,
        body: dict[str, Any],
        request: GenerationRequest,
        reasoning: str,
        usage: Usage,
        reader: ChunkReader,
    ) -> AsyncGenerator[Event, None]:
        """Ask once more for the answer the model left out (repairs.py): after its reasoning where
        the upstream continues a message, else the same body, whose reasoning is not shown."""
        follow_up = bool(request.messages) and request.messages[-1].role == "tool"
        self._count("reasoning_only" if reasoning and not follow_up else "empty_answer")
        dialect = self.config.dialect
        max_tokens = request.sampling.max_tokens
        left = None if max_tokens is None else max(max_tokens - usage.completion_tokens, 1)
        if reasoning and dialect in budget.FORCED:
            async for event in self._stream(budget.continuation_body(body, dialect, reasoning, left), reader):
                yield event
            return
        async for event in self._stream(body, reader):
            if not isinstance(event, ReasoningDelta):
                yield event

    def _answer_calls(self, reader: ChunkReader, request: GenerationRequest, ids: IdMap) -> list[ToolCall]:
        """The answer's calls, repaired (repairs.py): merged ones split, raw markers parsed."""
        calls = [part for call in reader.tool_calls() for part in repairs.split_merged(call)]
        if reader.split or len(calls) > len(reader.calls):
            self._count("split_tool_calls")
        leaked = reader.leaked()
        if leaked:
            self._count("tool_markers")
            calls += [ToolCall(r.id, repairs.name_of(r, request.tools), r.arguments or "{}") for r in leaked]
        return self._one_unless_parallel(self._client_ids(calls, ids), request)

    def _one_unless_parallel(self, calls: list[ToolCall], request: GenerationRequest) -> list[ToolCall]:
        """Under `parallel_tool_calls: false` or a named `tool_choice`, the first call only (as
        vLLM filters them): an upstream that ignores the field may still make several. The rest
        are dropped before validation, logged and counted (repairs kind `extra_tool_calls`)."""
        several = request.parallel_tool_calls and request.tool_choice.mode != "named"
        if several or len(calls) <= 1:
            return calls
        self.repairs["extra_tool_calls"] += len(calls) - 1
        log.info(
            "upstream %s made %d tool calls where one was asked for; kept the first",
            self.config.label,
            len(calls),
        )
        return calls[:1]

    async def _within_budget(
        self, body: dict[str, Any], forcing: budget.Forcing
    ) -> AsyncGenerator[Event, None]:
        """The first stream until its reasoning reaches the budget (then closed, which cancels it
        upstream), and the continuation that answers after the reasoning so far (budget.py)."""
        async with contextlib.aclosing(self._stream(body, forcing.first)) as events:
            async for event in events:
                yield event
                if forcing.reached(event):
                    break
        if not forcing.cut:
            return
        log.info(
            "upstream %s: reasoning cut at %d tokens (budget %d)",
            self.config.label,
            forcing.spent,
            forcing.budget,
        )
        continuation = forcing.continuation(body)
        if continuation is None or forcing.second is None:
            return
        try:
            async for event in self._stream(continuation, forcing.second):
                yield event
        except InvalidRequest as exc:  # kimiserve's continuation refused, not the client's request
            error = EngineError(
                f"The upstream {self.config.label} refused to continue after the reasoning "
                f"budget (does it take continue_final_message?): {exc.message}"
            )
            error.settles_delivered = True  # the reasoning reached the client
            raise error from None

    async def _stream(self, body: dict[str, Any], reader: ChunkReader) -> AsyncGenerator[Event, None]:
        """POST one streamed request; yield its text and reasoning, leave the rest in `reader`."""
        label = self.config.label
        started = False
        try:
            async with self.session.post(self._url, data=orjson.dumps(body), headers=JSON) as response:
                if response.status >= 400:
                    raise errors.from_status(response.status, await response.read(), label)
                started = True
                content = response.content
                sse = SseData()
                while not sse.done:
                    piece = await content.readany()
                    for data in sse.feed(piece) if piece else sse.end():
                        try:
                            chunk = orjson.loads(data)
                        except ValueError:
                            raise errors.UpstreamBroken(
                                f"The upstream {label} sent a chunk that is not JSON."
                            ) from None
                        if not isinstance(chunk, dict):
                            raise errors.UpstreamBroken(
                                f"The upstream {label} sent a chunk that is not an object."
                            )
                        if "error" in chunk and not chunk.get("choices"):
                            raise errors.from_stream_error(chunk, label)
                        for event in reader.feed(chunk):
                            yield event
                    if not piece:
                        break  # the body ended (without `[DONE]`: judged below by `finish`)
                for event in reader.close():
                    yield event
                # After `[DONE]` only the end of the body is left (usually already received):
                # read it, so the connection is reused rather than closed; a body that does not
                # end soon is dropped with its connection.
                if not content.at_eof():
                    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                        async with asyncio.timeout(DRAIN_S):
                            while await content.readany():
                                pass
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise errors.from_transport(exc, label, streaming=started) from None
        if reader.finish is None:
            raise errors.UpstreamBroken(f"The upstream {label} ended the stream without finishing it.")

    def _client_ids(self, calls: list[ToolCall], ids: IdMap) -> list[ToolCall]:
        """Calls as the client sees them: an id the upstream left out, or (Kimi dialects) one not
        of the form `functions.name:idx`, becomes `functions.name:idx` with the conversation's
        next index; an id from the (renamed) history maps back to the client's own."""
        out = []
        kimi = self.config.dialect != "openai"
        for i, call in enumerate(calls):
            wire = call.id
            if not wire or (kimi and not repairs.is_kimi_id(wire, call.name)):
                if wire:
                    self._count("tool_call_id")
                wire = kimi_id(call.name, ids.count + i)
            out.append(replace(call, id=ids.client.get(wire, wire)))
        return out

    def _reask_body(
        self, body: dict[str, Any], bad: list[tuple[ToolCall, str]], ids: IdMap
    ) -> dict[str, Any]:
        wire_ids = [kimi_id(c.name, ids.count + i) for i, (c, _) in enumerate(bad)]
        assistant = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": w, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for w, (c, _) in zip(wire_ids, bad, strict=True)
            ],
        }
        results = [
            {"role": "tool", "tool_call_id": w, "content": REASK.format(problem=p)}
            for w, (_, p) in zip(wire_ids, bad, strict=True)
        ]
        return {**body, "messages": [*body["messages"], assistant, *results]}

    async def health(self) -> Health:
        started = time.monotonic()
        try:
            async with self.session.get(
                self.config.base_url + "/models", timeout=aiohttp.ClientTimeout(total=5.0)
            ) as response:
                await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Health(ok=False, detail=f"{type(exc).__name__}")
        ms = (time.monotonic() - started) * 1000
        if response.status != 200:
            return Health(ok=False, detail=f"HTTP {response.status}")
        return Health(ok=True, detail=f"{ms:.0f} ms")

    async def models(self) -> list[str]:
        """The model ids the upstream lists (`GET /models`); raises the mapped error."""
        try:
            async with self.session.get(
                self.config.base_url + "/models", timeout=aiohttp.ClientTimeout(total=10.0)
            ) as response:
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise errors.from_transport(exc, self.config.label, streaming=False) from None
        if response.status >= 400:
            raise errors.from_status(response.status, raw, self.config.label)
        try:
            listed = json.loads(raw)
        except ValueError:
            raise errors.UpstreamBroken(
                f"The upstream {self.config.label} listed its models in a body that is not JSON."
            ) from None
        data = (listed.get("data") if isinstance(listed, dict) else None) or []
        return [str(m.get("id")) for m in data if isinstance(m, dict)]

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
