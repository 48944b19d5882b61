"""One llama.cpp sampler chain per sequence, built from the request's `Sampling`, and its grammar.

Chain order (llama.cpp's own): EOG ban (`ignore_eos`) → penalties → top-k → top-p → min-p →
temperature → dist(seed); temperature 0 ends in greedy instead.

Unconstrained sequences never leave llama.cpp's own `llama_sampler_sample`. A constrained one
carries an llguidance matcher (`grammar.py`): the scheduler has its token mask computed on a
thread pool while the batch decodes (`compute_mask`, GIL released), then `sample_logits` applies
the mask to the sequence's logits (numpy, ~100 µs for 49k tokens), runs the chain on what is
left and the matcher consumes the token. Under a JSON grammar, `JsonGuard` (`jsonguard.py`)
first narrows the mask so that numbers end and loops wind up. With `max_tokens`, `JsonTail`
(`jsonclose.py`) closes the JSON before the budget runs out, when `may_close` accepts the closed
text (see the rule in `jsonclose.py`); otherwise the output is cut as it stands.

Seeds: llama.cpp reads seed 0xFFFFFFFF as "pick a random seed", so that one value is sampled
with seed 0xFFFFFFFE instead; every other uint32 seed is used as is.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import llama_cpp as llama
import numpy as np
import numpy.typing as npt

from kimiserve.domain.types import Sampling
from kimiserve.engines.llamacpp.grammar import Grammar
from kimiserve.engines.llamacpp.jsonclose import JsonTail
from kimiserve.engines.llamacpp.jsonguard import JsonGuard
from kimiserve.engines.llamacpp.model import NativeModel
from kimiserve.errors import EngineError, GrammarError

RANDOM_SEED = 0xFFFFFFFF


TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])  # llama_token_data


class Candidates:
    """A reusable `llama_token_data_array` over the whole vocabulary (constrained path only)."""

    def __init__(self, n_vocab: int) -> None:
        self._n = n_vocab
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._data = np.zeros(n_vocab, dtype=TOKEN_DATA)
        self._pointer = self._data.ctypes.data_as(llama.llama_token_data_p)
        self.array = llama.llama_token_data_array(data=self._pointer, size=n_vocab, selected=-1, sorted=False)

    def fill(self, logits: npt.NDArray[np.float32], allowed: npt.NDArray[np.bool_]) -> None:
        self._data["id"] = self._ids
        self._data["logit"] = logits
        self._data["logit"][~allowed] = -np.inf
        self._data["p"] = 0.0
        self.array.data = self._pointer  # type: ignore[assignment]  # samplers may move it
        self.array.size = self._n
        self.array.selected = -1
        self.array.sorted = False

    def selected(self) -> int:
        return int(self.array.data[self.array.selected].id)


class SamplerChain:
    """An owned `llama_sampler` chain, and the sequence's grammar matcher; `free()` releases them."""

    def __init__(
        self,
        model: NativeModel,
        sampling: Sampling,
        grammar: Grammar | None,
        *,
        active: bool = True,
        may_close: Callable[[bytes], bool] | None = None,
    ) -> None:
        """`may_close(closed_text)`: whether JSON cut by max_tokens may be closed into that text
        (None: never, the output is cut as it stands)."""
        params = llama.llama_sampler_chain_default_params()
        params.no_perf = True
        self.handle: llama.llama_sampler_p | None = llama.llama_sampler_chain_init(params)
        self._model = model
        self._eog = model.eog_tokens
        self._grammar = grammar
        self.matcher = grammar.matcher() if grammar is not None else None
        self._may_close = may_close
        self._start_json()
        # The grammar applies from activate() on (after a reasoning section or a call marker).
        self.active = active
        try:
            self._build(model, sampling, constrained=grammar is not None)
        except BaseException:
            self.free()
            raise
        words = (model.n_vocab + 31) // 32
        self._mask = np.full(words, -1, dtype=np.int32) if self.matcher is not None else None
        self._candidates = Candidates(model.n_vocab) if self.matcher is not None else None

    @property
    def constrained(self) -> bool:
        return self.matcher is not None and self.active

    def activate(self, prefix: list[int]) -> int:
        """Apply the grammar from now on; `prefix`: tokens already written that it should
        consume first (the text after a call marker inside the marker's last token). Tokens it
        refuses are not consumed (the grammar starts at the next token). Returns how many it took."""
        self.active = True
        if self.matcher is None or not prefix:
            return 0
        accepted = int(self.matcher.try_consume_tokens(prefix))
        for token in prefix[:accepted]:
            self._feed_tail(token)
        return accepted

    def _feed_tail(self, token: int) -> None:
        if self.tail is not None:
            piece = self._model.piece(token)
            self.tail.feed(piece)
            self._json += piece

    def restart(self) -> None:
        """The grammar from its start again, for another tool call in the same turn; it applies
        from the next activate() on."""
        grammar = self._grammar
        if grammar is None:
            return
        self.matcher = grammar.matcher()
        self._start_json()
        self.active = False

    def _start_json(self) -> None:
        """Follow the JSON the grammar writes from its first byte: tail, guard, text, closing."""
        json_grammar = self._grammar is not None and self._grammar.json
        self.tail = JsonTail() if json_grammar else None
        self.guard = JsonGuard(self._model.json_tokens) if json_grammar else None
        self._json = bytearray()  # what the tail has read: the JSON so far
        self.closing = False  # tokens are being forced to close the JSON before max_tokens
        self.closing_valid = True  # ...and the grammar accepted every one (else it is not asked again)

    def accept_forced(self, token: int) -> None:
        """A token the engine wrote itself (not sampled): the chain's history sees it."""
        llama.llama_sampler_accept(self.handle, token)

    def _add(self, sampler: llama.llama_sampler_p | None) -> None:
        if not sampler:  # a NULL pointer: llama.cpp refused the parameters
            raise GrammarError("llama.cpp refused the sampler settings.", parameter="sampling")
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
        """Sample (and accept) a token from output `index` of the last decode (unconstrained)."""
        return int(llama.llama_sampler_sample(self.handle, ctx, index))

    def compute_mask(self) -> None:
        """The allowed next tokens into this sequence's mask (any thread; releases the GIL)."""
        assert self.matcher is not None and self._mask is not None
        self.matcher.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)

    def sample_logits(self, logits: npt.NDArray[np.float32], remaining: int | None) -> int:
        """Sample and accept a token under the grammar from one row of logits.

        `remaining`: tokens the sequence may still produce, this one included (None: no limit).
        """
        assert self.matcher is not None and self._mask is not None and self._candidates is not None
        if self.closing:  # no more sampling: the rest of the shortest closing, token by token
            return self._force()
        if self.matcher.is_error():
            raise EngineError(f"The grammar failed while generating: {self.matcher.get_error()[:200]}")
        bits = np.unpackbits(self._mask.view(np.uint8), bitorder="little")[: self._model.n_vocab].astype(bool)
        if self.guard is not None and self.tail is not None:
            bits = self.guard.narrow(self.tail, self._json, bits)
        cand = self._candidates
        cand.fill(logits, bits)
        llama.llama_sampler_apply(self.handle, ctypes.byref(cand.array))
        token = cand.selected()
        if self.tail is not None and remaining is not None and token not in self._eog:
            token = self._within_budget(token, remaining - 1)
        llama.llama_sampler_accept(self.handle, token)
        if token not in self._eog:
            # A forced closing token may break the schema (a required key never written): the
            # matcher is not asked again after that, the output still parses.
            if not self.matcher.consume_token(token):
                if not self.closing:
                    raise EngineError("The grammar rejected a token it allowed.")
                self.closing_valid = False
            self._feed_tail(token)
        return token

    def _within_budget(self, token: int, left_after: int) -> int:
        """`token`, unless the JSON it leaves open cannot be closed in `left_after` tokens: then
        the first token of the closing (each closing character costs at most one token), if the
        JSON so far may be closed (`may_close`, no invented key) and the closing fits."""
        assert self.tail is not None
        after = self.tail.copy()
        after.feed(self._model.piece(token))
        closing = after.closing()
        if closing is None or len(closing) <= left_after:
            return token
        here = self.tail.closing()
        if not here or len(here) > left_after + 1 or self.tail.invents_key:
            return token  # cut as it stands (unless a later state closes validly)
        if self._may_close is None or not self._may_close(bytes(self._json) + here.encode()):
            return token
        self.closing = True
        return self._force(accept=False)

    def _force(self, *, accept: bool = True) -> int:
        assert self.tail is not None
        token = self._model.tokenize(self.tail.closing() or "")[0]
        if accept:
            llama.llama_sampler_accept(self.handle, token)
            self._feed_tail(token)
            # Still followed by the grammar: tells whether the closed output matches it.
            if self.closing_valid and self.matcher is not None and not self.matcher.consume_token(token):
                self.closing_valid = False
        return token

    @property
    def needs_mask(self) -> bool:
        return self.constrained and not self.closing

    @property
    def closed(self) -> bool:
        """The JSON was closed early by forced tokens: the sequence ends (reason `length`)."""
        return self.closing and self.tail is not None and self.tail.done

    def free(self) -> None:
        handle, self.handle = self.handle, None
        if handle:
            llama.llama_sampler_free(handle)

    def __del__(self) -> None:  # a stream that was never iterated still frees its samplers
        self.free()
