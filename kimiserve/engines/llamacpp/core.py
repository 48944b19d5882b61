"""The engine core: the loaded model, its chat template, grammars and the batching scheduler.

Everything native lives here; `LlamaCppEngine` runs one core either in a supervised worker
process (the default, `worker.py`) or in its own process (`isolated=False`, for benchmarks of
the boundary). Both speak to it with the same calls:

- `check(request)`: everything a request needs, without running it (prompt tokens, context
  length, the grammar compiled through the cache); raises `InvalidRequest`/`GrammarError`.
- `submit(job_id, request)`: check, then queue; the job's events come out of `emit` (one call
  per scheduler step for all jobs) and a refusal comes out there too, as the job's only item.
- `cancel(job_id)`, `close()`.
"""

from __future__ import annotations

import logging

from llguidance.llamacpp import lltokenizer_from_vocab

from kimiserve.domain.types import Constraint, Finished, GenerationRequest, Usage, reasoning_budget
from kimiserve.engines.llamacpp import toolcalls
from kimiserve.engines.llamacpp.config import LlamaCppConfig
from kimiserve.engines.llamacpp.grammar import Grammar, GrammarCache
from kimiserve.engines.llamacpp.job import Emit, Job
from kimiserve.engines.llamacpp.jsonclose import SchemaCheck
from kimiserve.engines.llamacpp.model import NativeModel
from kimiserve.engines.llamacpp.sampling import SamplerChain
from kimiserve.engines.llamacpp.scheduler import Scheduler
from kimiserve.engines.llamacpp.template import ChatTemplate
from kimiserve.engines.llamacpp.turn import Turn
from kimiserve.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    KimiserveError,
    UnsupportedFeature,
)

log = logging.getLogger(__name__)


class Core:
    def __init__(self, config: LlamaCppConfig, emit: Emit) -> None:
        self.config = config
        self._emit = emit
        self.model = NativeModel(config)
        try:
            self.template = ChatTemplate(
                self.model.chat_template, bos_token=self.model.bos_text, eos_token=self.model.eos_text
            )
            tokenizer = lltokenizer_from_vocab(
                self.model.vocab, eos_token=sorted(self.model.eog_tokens) or None
            )
            self.grammars = GrammarCache(
                tokenizer, budget_s=config.grammar_budget_s, size=config.grammar_cache
            )
            self._think_close = tuple(self.model.tokenize(toolcalls.THINK_CLOSE))
            self._call_open = tuple(self.model.tokenize(toolcalls.CALL_OPEN))
            self._call_close = tuple(self.model.tokenize(toolcalls.CALL_CLOSE))
            self._next_call = tuple(self.model.tokenize(toolcalls.CALLS_APART + toolcalls.CALL_OPEN))
            self._eog = tuple(sorted(self.model.eog_tokens))
            self.scheduler = Scheduler(self.model, config, emit)
            self.scheduler.start()
            self._cancelled_early: set[int] = set()  # cancelled before their submit was handled
        except BaseException:
            self.model.close()
            raise

    @property
    def n_ctx_seq(self) -> int:
        return self.model.n_ctx_seq

    def tokenize(self, request: GenerationRequest) -> list[int]:
        """The prompt tokens a request renders to: its messages (tools listed in the system
        message, see `toolcalls.py`) through the model's chat template, and `<think>\n` when the
        request thinks."""
        text = self.template.render(toolcalls.prompt_messages(request))
        if request.thinking != "none":
            text += toolcalls.THINK_OPEN
        return self.model.tokenize(text)

    def grammar(self, request: GenerationRequest) -> Grammar | None:
        """The request's grammar (compiled within the budget, cached): its tools' calls when a
        call may be made, else its constraint. A tool schema that does not compile is refused
        naming `tools[i].schema`."""
        if not self._calls_grammar(request):
            return self.grammars.get(request.constraint)
        offered = toolcalls.calls_offered(request)
        for i, tool in enumerate(request.tools):
            if tool in offered:
                self.grammars.get(Constraint(json_schema=tool.parameters), parameter=f"tools[{i}].schema")
        return self.grammars.get_calls(toolcalls.call_grammar(offered), parameter="tools")

    @staticmethod
    def _calls_grammar(request: GenerationRequest) -> bool:
        """The request generates under its tools' call grammar (not its own constraint)."""
        offered = toolcalls.calls_offered(request)
        return bool(offered) and (request.constraint is None or toolcalls.call_forced(request))

    def _may_close(self, request: GenerationRequest) -> SchemaCheck | None:
        """What may close JSON cut by max_tokens (`jsonclose.py`'s rule): the request's JSON
        schema; nothing for a tool call, whose arguments are returned as cut."""
        if self._calls_grammar(request) or request.constraint is None:
            return None
        schema = request.constraint.json_schema
        return SchemaCheck(schema) if schema is not None else None

    def check(self, request: GenerationRequest) -> list[int]:
        """Validate a request and compile its grammar (cached); return its prompt tokens."""
        if request.images:
            raise UnsupportedFeature("This model does not accept images.", parameter="images")
        if request.videos:
            raise UnsupportedFeature("This model does not accept videos.", parameter="videos")
        prompt = self.tokenize(request)
        if not prompt:
            raise InvalidRequest("The messages render to an empty prompt.", parameter="messages")
        limit = self.model.n_ctx_seq
        if len(prompt) >= limit:
            raise ContextLengthExceeded(
                f"The prompt is {len(prompt)} tokens; this model's context is {limit} tokens.",
                parameter="messages",
            )
        max_tokens = request.sampling.max_tokens
        if max_tokens is not None and len(prompt) + max_tokens > limit:
            raise ContextLengthExceeded(
                f"The prompt ({len(prompt)} tokens) plus the {max_tokens} output tokens asked for exceed "
                f"this model's context of {limit} tokens; at most {limit - len(prompt)} can be asked for.",
                parameter="max_tokens",
            )
        self.grammar(request)
        return prompt

    def submit(self, job_id: int, request: GenerationRequest) -> None:
        """Queue a request; a refusal is emitted as the job's only item."""
        try:
            prompt = self.check(request)
            sampling = request.sampling
            if sampling.max_tokens is not None and sampling.max_tokens <= 0:
                self._emit([(job_id, [Usage(len(prompt), 0), Finished("length")])], -1, -1)
                return
            if job_id in self._cancelled_early:
                self._cancelled_early.discard(job_id)
                return
            sampler = SamplerChain(
                self.model, sampling, self.grammar(request), active=False, may_close=self._may_close(request)
            )
            job = Job(
                job_id,
                prompt,
                sampling,
                sampler,
                self._turn(request, sampler, len(prompt)),
                request.cache_scope,
            )
            self.scheduler.submit(job)
            if job_id in self._cancelled_early:  # the cancel overtook this submit
                self._cancelled_early.discard(job_id)
                self.scheduler.cancel(job_id)
        except KimiserveError as exc:
            self._emit([(job_id, [exc])], -1, -1)

    def _turn(self, request: GenerationRequest, sampler: SamplerChain, prompt_tokens: int) -> Turn:
        offered = toolcalls.calls_offered(request)
        # Reasoning gets the request's budget (its level's, or an exact one), but at most half of
        # what the turn can still write
        # (max_tokens, the context left), so the answer always has room.
        room = self.model.n_ctx_seq - prompt_tokens
        if request.sampling.max_tokens is not None:
            room = min(room, request.sampling.max_tokens)
        budget = min(reasoning_budget(request), room // 2)
        forced = toolcalls.call_forced(request)
        return Turn(
            sampler=sampler,
            piece=self.model.piece,
            tokenize=self.model.tokenize,
            stops=request.sampling.stop,
            budget=max(budget, 1) if request.thinking != "none" else 0,
            think_close=self._think_close,
            tools=offered,
            forced_call=self._call_open if forced else None,
            lazy_call=bool(offered) and not forced and request.constraint is None,
            max_calls=toolcalls.max_calls(request),
            first_index=toolcalls.calls_before(request),
            call_close=self._call_close,
            next_call=self._next_call,
            eog=self._eog,
            logprobs=request.sampling.logprobs is not None,
        )

    def cancel(self, job_id: int) -> None:
        if not self.scheduler.cancel(job_id) and len(self._cancelled_early) < 10_000:
            self._cancelled_early.add(job_id)

    def close(self) -> None:
        self.scheduler.stop()
        self.grammars.close()
        self.model.close()
