"""A generated token's log probability and its most likely alternatives, from one logits row.

As llama.cpp's server computes them for `n_probs` (OpenAI `logprobs`/`top_logprobs`; its
`post_sampling_probs` off, the default): a softmax over the model's raw logits for that position,
before the sampler chain (penalties, top-k, top-p, min-p, temperature) and before a grammar's
mask. So a token the grammar forced can show a low logprob, and temperature does not change them.
One engine change sits in the row itself: right after a reasoning section, end-of-generation is
banned (-inf) until the answer has text (`turn.py`), so it never appears among those tokens'
alternatives.

Only computed for requests that ask (`Sampling.logprobs` not None): per answer token a
log-sum-exp over the vocabulary and one `argmax` per alternative.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from kimiserve.domain.types import TokenLogprob


def token_logprob(
    row: npt.NDArray[np.float32], token: int, top: int, piece: Callable[[int], bytes]
) -> TokenLogprob:
    """`token`'s logprob under `row` (raw logits), with the `top` most likely tokens (most likely
    first; equal logits in token-id order). `piece`: a token's bytes in output text."""
    peak = float(row.max())
    total = math.log(float(np.exp(row - peak).sum(dtype=np.float64))) + peak
    return _entry(token, float(row[token]) - total, piece, _top(row, top, total, piece))


def _top(
    row: npt.NDArray[np.float32], top: int, total: float, piece: Callable[[int], bytes]
) -> tuple[TokenLogprob, ...]:
    """The `top` most likely tokens: one `argmax` each over a copy (for up to 20 of 49k tokens
    several times faster than `argpartition`; ties go to the lower id, as argmax picks)."""
    if top <= 0:
        return ()
    left = row.copy()
    out = []
    for _ in range(min(top, row.shape[0])):
        best = int(left.argmax())
        out.append(_entry(best, float(row[best]) - total, piece))
        left[best] = -np.inf
    return tuple(out)


def _entry(
    token: int, logprob: float, piece: Callable[[int], bytes], top: tuple[TokenLogprob, ...] = ()
) -> TokenLogprob:
    data = piece(token)
    return TokenLogprob(data.decode("utf-8", errors="replace"), logprob, data, top)
