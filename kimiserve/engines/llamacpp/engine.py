"""The embedded llama.cpp engine: an asyncio facade over the batching scheduler thread.

Construction is synchronous and loads the model (about a second for SmolLM2-135M; call it
through `asyncio.to_thread` from a running loop if that matters), then starts the scheduler
thread. `aclose()` (or `close()`) stops the thread and frees the model and its context.

`generate()` checks the request before returning the stream, so a request that cannot run
raises right there: `UnsupportedFeature` (images/videos), `ContextLengthExceeded`,
`GrammarError`, `InvalidRequest` (the chat template rejected the messages). The stream then
queues the request (`EngineOverloaded` on the first `__anext__` if `max_waiting` requests are
queued already) and yields TextDelta…, one Usage, one Finished. Closing the stream or
cancelling its task drops the sequence at the scheduler's next step and frees its KV.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from kimiserve.domain.types import Event, Finished, GenerationRequest, Usage
from kimiserve.engines.base import Capabilities, Health
from kimiserve.engines.llamacpp.config import LlamaCppConfig
from kimiserve.engines.llamacpp.job import Item, Job
from kimiserve.engines.llamacpp.model import NativeModel
from kimiserve.engines.llamacpp.sampling import SamplerChain, grammar_source
from kimiserve.engines.llamacpp.scheduler import Scheduler
from kimiserve.engines.llamacpp.template import ChatTemplate
from kimiserve.errors import ContextLengthExceeded, InvalidRequest, ServiceUnavailable, UnsupportedFeature


@dataclass(frozen=True)
class _Prepared:
    """A checked request: its prompt tokens and sampler, not yet handed to the scheduler."""

    request: GenerationRequest
    prompt: list[int]
    sampler: SamplerChain


class LlamaCppEngine:
    name = "llamacpp"

    def __init__(self, config: LlamaCppConfig | None = None) -> None:
        self.config = config if config is not None else LlamaCppConfig()
        self._model = NativeModel(self.config)
        try:
            self._template = ChatTemplate(
                self._model.chat_template, bos_token=self._model.bos_text, eos_token=self._model.eos_text
            )
            self._scheduler = Scheduler(self._model, self.config)
            self._scheduler.start()
        except BaseException:
            self._model.close()
            raise
        self._closed = False
        self.capabilities = Capabilities(
            context_length=self._model.n_ctx_seq,
            thinking="budgeted",
            tools="constrained",
            vision=False,
            max_concurrency=self.config.max_sequences,
        )

    @property
    def model_path(self) -> str:
        return self._model.path

    def tokenize(self, request: GenerationRequest) -> list[int]:
        """The prompt tokens a request's messages render to with the model's chat template."""
        return self._model.tokenize(self._template.render(request.messages, request.tools))

    def generate(self, request: GenerationRequest) -> AsyncGenerator[Event, None]:
        return self._stream(self._prepare(request))

    @property
    def active_sequences(self) -> int:
        """Sequences in the batch right now (for monitoring and tests)."""
        return self._scheduler.active

    def _prepare(self, request: GenerationRequest) -> _Prepared:
        if self._closed:
            raise ServiceUnavailable("The llama.cpp engine is shut down.")
        if request.images:
            raise UnsupportedFeature("This model does not accept images.", parameter="images")
        if request.videos:
            raise UnsupportedFeature("This model does not accept videos.", parameter="videos")
        prompt = self.tokenize(request)
        if not prompt:
            raise InvalidRequest("The messages render to an empty prompt.", parameter="messages")
        limit = self._model.n_ctx_seq
        if len(prompt) >= limit:
            raise ContextLengthExceeded(
                f"The prompt is {len(prompt)} tokens; this model's context is {limit} tokens.",
                parameter="messages",
            )
        max_tokens = request.sampling.max_tokens
        if max_tokens is not None and len(prompt) + max_tokens > limit:
            raise ContextLengthExceeded(
                f"The prompt ({len(prompt)} tokens) plus maxTokens ({max_tokens}) exceed this model's "
                f"context of {limit} tokens; at most {limit - len(prompt)} tokens can be generated.",
                parameter="max_tokens",
            )
        grammar = grammar_source(request.constraint)
        sampler = SamplerChain(self._model, request.sampling, grammar)
        return _Prepared(request, prompt, sampler)

    async def _stream(self, prepared: _Prepared) -> AsyncGenerator[Event, None]:
        sampling = prepared.request.sampling
        if sampling.max_tokens is not None and sampling.max_tokens <= 0:
            prepared.sampler.free()
            yield Usage(len(prepared.prompt), 0)
            yield Finished("length")
            return
        queue: asyncio.Queue[Item] = asyncio.Queue()
        job = Job(prepared.prompt, sampling, prepared.sampler, asyncio.get_running_loop(), queue)
        self._scheduler.submit(job)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            if not job.done:
                self._scheduler.cancel(job)

    async def health(self) -> Health:
        if self._scheduler.alive:
            busy = f"{self.active_sequences} of {self.config.max_sequences} sequences busy"
            return Health(ok=True, detail=busy)
        return Health(ok=False, detail=self._scheduler.failure or "the scheduler thread is not running")

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._scheduler.stop()
        self._model.close()
