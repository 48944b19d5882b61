"""One llama.cpp sampler chain per sequence, built from the request's `Sampling` and constraint.

Chain order (llama.cpp's own): EOG ban (`ignore_eos`) → penalties → top-k → top-p → min-p →
temperature → dist(seed); temperature 0 ends in greedy instead.

A grammar (GBNF, or a JSON schema turned into GBNF) is a separate sampler, used the way
llama.cpp's `common_sampler` uses it: sample with the chain, check only the sampled token
against the grammar, and only when the grammar rejects it apply the grammar to the whole
vocabulary and sample again. Applying a JSON grammar to all 49k candidates costs ~15 ms per
token on this CPU; the check costs microseconds. This path fills the candidate array from the
logits with numpy (~50 µs); unconstrained sequences never leave llama.cpp's own
`llama_sampler_sample`. A token the grammar rejects is never accepted (llama.cpp would abort
the process on it).

Seeds: llama.cpp reads seed 0xFFFFFFFF as "pick a random seed", so that one value is sampled
with seed 0xFFFFFFFE instead; every other uint32 seed is used as is.
"""

from __future__ import annotations

import ctypes
import json
import re

import llama_cpp as llama
import numpy as np

from kimiserve.domain.types import Constraint, Sampling
from kimiserve.engines.llamacpp.model import NativeModel, native_errors
from kimiserve.engines.llamacpp.schema_grammar import schema_to_gbnf
from kimiserve.errors import GrammarError

RANDOM_SEED = 0xFFFFFFFF
JSON_CHAR = re.compile(r"^char ::= .*$", re.MULTILINE)
JSON_CHAR_RULE = r'char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'


def grammar_source(constraint: Constraint | None) -> str | None:
    """The GBNF text a constraint asks for; GrammarError when a schema cannot be converted."""
    if constraint is None:
        return None
    if constraint.json_schema is not None:
        try:
            json.loads(constraint.json_schema)
        except ValueError as exc:
            raise GrammarError(
                f"The JSON schema is not valid JSON: {exc}", parameter="response_format"
            ) from exc
        try:
            gbnf = schema_to_gbnf(constraint.json_schema)
        except RecursionError as exc:
            raise GrammarError("The JSON schema nests too deeply.", parameter="response_format") from exc
        except Exception as exc:  # the converter raises bare Exception/ValueError/KeyError/...
            raise GrammarError(
                f"The JSON schema cannot be turned into a grammar: {exc}", parameter="response_format"
            ) from exc
        # llama-cpp-python's converter lets raw control characters into strings (invalid JSON);
        # use llama.cpp's own rule for a JSON string character instead.
        return JSON_CHAR.sub(lambda _: JSON_CHAR_RULE, gbnf)
    if constraint.grammar is not None:
        if not constraint.grammar.strip():
            raise GrammarError("The grammar is empty.", parameter="response_format")
        return constraint.grammar
    return None


TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])  # llama_token_data


class Candidates:
    """A reusable `llama_token_data_array` over the whole vocabulary (constrained path only)."""

    def __init__(self, n_vocab: int) -> None:
        self._n = n_vocab
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._data = np.zeros(n_vocab, dtype=TOKEN_DATA)
        self._pointer = self._data.ctypes.data_as(llama.llama_token_data_p)
        self.array = llama.llama_token_data_array(data=self._pointer, size=n_vocab, selected=-1, sorted=False)
        self._single = (llama.llama_token_data * 1)()
        self.one = llama.llama_token_data_array(data=self._single, size=1, selected=-1, sorted=False)

    def fill(self, ctx: ctypes.c_void_p, index: int) -> None:
        logits = llama.llama_get_logits_ith(ctx, index)
        self._data["id"] = self._ids
        self._data["logit"] = np.ctypeslib.as_array(logits, shape=(self._n,))
        self._data["p"] = 0.0
        self.array.data = self._pointer  # type: ignore[assignment]  # samplers may move it
        self.array.size = self._n
        self.array.selected = -1
        self.array.sorted = False

    def selected(self) -> int:
        return int(self.array.data[self.array.selected].id)

    def set_one(self, token: int) -> None:
        self._single[0].id = llama.llama_token(token)
        self._single[0].logit = 1.0
        self._single[0].p = 0.0
        self.one.size = 1
        self.one.selected = -1
        self.one.sorted = False


class SamplerChain:
    """An owned `llama_sampler` chain (and grammar sampler); `free()` releases them."""

    def __init__(self, model: NativeModel, sampling: Sampling, grammar: str | None) -> None:
        params = llama.llama_sampler_chain_default_params()
        params.no_perf = True
        self.handle: llama.llama_sampler_p | None = llama.llama_sampler_chain_init(params)
        self.grammar: llama.llama_sampler_p | None = None
        self._eog = model.eog_tokens
        try:
            if grammar is not None:
                self.grammar = compile_grammar(model, grammar)
            self._build(model, sampling, constrained=grammar is not None)
        except BaseException:
            self.free()
            raise
        self._candidates = Candidates(model.n_vocab) if self.grammar else None

    @property
    def constrained(self) -> bool:
        return self.grammar is not None

    def _add(self, sampler: llama.llama_sampler_p | None) -> None:
        if not sampler:  # a NULL pointer: llama.cpp refused the parameters
            raise GrammarError("llama.cpp refused a sampler", parameter="response_format")
        llama.llama_sampler_chain_add(self.handle, sampler)

    def _build(self, model: NativeModel, sampling: Sampling, *, constrained: bool) -> None:
        if sampling.ignore_eos and model.eog_tokens and not constrained:
            # With a grammar, ending is the grammar's call: banning EOG there could leave no token.
            bias = (llama.llama_logit_bias * len(model.eog_tokens))()
            for i, token in enumerate(sorted(model.eog_tokens)):
                bias[i].token = llama.llama_token(token)
                bias[i].bias = float("-inf")
            self._add(llama.llama_sampler_init_logit_bias(model.n_vocab, len(bias), bias))
        if (
            sampling.repetition_penalty != 1.0
            or sampling.frequency_penalty != 0.0
            or sampling.presence_penalty != 0.0
        ):
            self._add(
                llama.llama_sampler_init_penalties(
                    model.n_vocab,
                    model.n_ctx_seq,
                    sampling.repetition_penalty,
                    sampling.frequency_penalty,
                    sampling.presence_penalty,
                )
            )
        if sampling.temperature <= 0.0:
            self._add(llama.llama_sampler_init_greedy())
            return
        if sampling.top_k > 0:
            self._add(llama.llama_sampler_init_top_k(sampling.top_k))
        if sampling.top_p < 1.0:
            self._add(llama.llama_sampler_init_top_p(sampling.top_p, 1))
        if sampling.min_p > 0.0:
            self._add(llama.llama_sampler_init_min_p(sampling.min_p, 1))
        self._add(llama.llama_sampler_init_temp(sampling.temperature))
        seed = sampling.seed & 0xFFFFFFFF
        self._add(llama.llama_sampler_init_dist(RANDOM_SEED - 1 if seed == RANDOM_SEED else seed))

    def sample(self, ctx: ctypes.c_void_p, index: int) -> int:
        """Sample (and accept) a token from output `index` of the last decode."""
        if self.grammar is None or self._candidates is None:
            return int(llama.llama_sampler_sample(self.handle, ctx, index))
        cand = self._candidates
        cand.fill(ctx, index)
        llama.llama_sampler_apply(self.handle, ctypes.byref(cand.array))
        token = cand.selected()
        cand.set_one(token)
        llama.llama_sampler_apply(self.grammar, ctypes.byref(cand.one))
        if cand.one.data[0].logit == float("-inf"):  # rejected: the grammar first, then the chain
            cand.fill(ctx, index)
            llama.llama_sampler_apply(self.grammar, ctypes.byref(cand.array))
            llama.llama_sampler_apply(self.handle, ctypes.byref(cand.array))
            token = cand.selected()
        if token not in self._eog:
            llama.llama_sampler_accept(self.grammar, token)
        llama.llama_sampler_accept(self.handle, token)
        return token

    def free(self) -> None:
        handle, self.handle = self.handle, None
        if handle:
            llama.llama_sampler_free(handle)
        grammar, self.grammar = self.grammar, None
        if grammar:
            llama.llama_sampler_free(grammar)

    def __del__(self) -> None:  # a stream that was never iterated still frees its samplers
        self.free()


def compile_grammar(model: NativeModel, grammar: str) -> llama.llama_sampler_p:
    with native_errors() as errors:
        sampler: llama.llama_sampler_p = llama.llama_sampler_init_grammar(
            model.vocab, grammar.encode("utf-8"), b"root"
        )
    if not sampler:  # NULL: the grammar did not parse
        detail = "; ".join(e for e in errors if e and "failed to parse grammar" not in e)
        raise GrammarError(
            "The grammar does not compile" + (f": {detail}" if detail else "."),
            parameter="response_format",
        )
    return sampler
