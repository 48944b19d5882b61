"""Money for one admitted request: hold the worst case, then settle the real cost or release.

The policy (also in the README):
- Before the engine runs, each generation's worst case is held: its prompt at the input price
  plus `max_tokens` at the output price (`numberResults` / `n` hold one each). An account
  whose available balance (balance − holds) cannot cover the holds gets `InsufficientCredits`
  (402) before any engine work. Unmetered accounts hold nothing and still record usage and cost.
- A generation that finishes is settled: its real cost charged, its hold released and its
  usage row written, in one transaction. The charge never exceeds the hold: an engine that
  reports more than the worst case (an upstream's re-asked tool call, a prompt it counts larger
  than the bound, e.g. images) is charged the hold, so a balance never goes below zero; the
  usage row keeps the tokens reported, its cost the amount charged, and that amount is what the
  client is told (`Charged`).
- A server-side failure (engine error, crash, shutdown) is never charged: the hold is released.
  One exception: an engine error marked `settles_delivered` (an upstream whose stream died or
  stalled after its first token) that ends a *streamed* generation after events reached the
  client charges what was delivered: the prompt plus the events streamed (one token each), with
  the usage row `interrupted`; the client still gets the terminal error.
- A client that leaves mid-generation pays for what was produced until then (its prompt and the
  tokens streamed), as OpenAI bills; the usage row says `disconnected`.
- Nothing is charged twice: a hold is settled or released once (the store refuses a second).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

from kimiserve.domain.ports import Hold, InsufficientBalance, LedgerStore, Observer, UsageRow
from kimiserve.domain.principal import Principal
from kimiserve.domain.types import GenerationRequest, Usage
from kimiserve.errors import EngineError, InsufficientCredits
from kimiserve.platform.prices import Price

log = logging.getLogger(__name__)

# Per message, tokens a chat template may add around the text (role markers, separators).
TEMPLATE_TOKENS_PER_MESSAGE = 16

Settle = Callable[[Hold | None, UsageRow], Awaitable[None]]


def prompt_token_bound(request: GenerationRequest) -> int:
    """An upper bound of the prompt's tokens for an engine that cannot count them: a byte-level
    tokenizer never makes more tokens than UTF-8 bytes, plus what the template adds."""
    text = sum(len(m.content.encode("utf-8", "replace")) for m in request.messages)
    calls = sum(len(c.arguments) + len(c.name) for m in request.messages for c in m.tool_calls)
    tools = sum(len(t.parameters) + len(t.description) + len(t.name) for t in request.tools)
    return text + calls + tools + TEMPLATE_TOKENS_PER_MESSAGE * (len(request.messages) + len(request.tools))


def settles_delivered(exc: BaseException) -> bool:
    """An engine failure that charges what a stream delivered before it (an upstream's mid-stream
    death); every other failure is released."""
    return isinstance(exc, EngineError) and exc.settles_delivered


async def reserve(
    ledger: LedgerStore, principal: Principal, request_id: str, worst: int, n: int, *, why: str
) -> list[Hold]:
    """Hold `worst` micro-USD `n` times for one request, or InsufficientCredits (402) saying `why`."""
    holds = [Hold(uuid.uuid4().hex, principal.account_id, request_id, worst) for _ in range(n)]
    try:
        await ledger.reserve(holds)
    except InsufficientBalance:
        raise InsufficientCredits(
            f"The account's available balance cannot cover {why} (${worst * n / 1_000_000:.6f})."
        ) from None
    return holds


class Meter:
    """The holds of one request's generations, each settled or released exactly once.

    `free_place` is called once per generation when it ends (the admission's capacity);
    `record_tokens` counts a settlement's output against the tokens-per-minute windows.
    """

    def __init__(
        self,
        *,
        ledger: LedgerStore,
        settle: Settle,
        observer: Observer,
        principal: Principal,
        request_id: str,
        protocol: str,
        model_id: str,
        price: Price,
        holds: list[Hold | None],
        free_place: Callable[[], None],
        record_tokens: Callable[[int], Awaitable[None]],
    ) -> None:
        self._ledger = ledger
        self._settle_hook = settle
        self._observer = observer
        self._principal = principal
        self._request_id = request_id
        self._protocol = protocol
        self._model_id = model_id
        self.price = price
        self.holds = holds  # per generation: its current hold, None when unmetered or ended
        self._open = [True] * len(holds)  # per generation: not yet ended
        self._free_place = free_place
        self._record_tokens = record_tokens

    def is_open(self, index: int) -> bool:
        return self._open[index]

    async def reserve_round(self, index: int, prompt_tokens: int, max_tokens: int) -> None:
        """A further round of the built-in tools' loop: its own worst case held."""
        worst = self.price.worst_case(prompt_tokens, max_tokens)
        why = (
            f"the next round of the built-in tools' loop ({prompt_tokens} prompt tokens + {max_tokens} "
            "output tokens); the rounds before it were charged"
        )
        [hold] = await reserve(self._ledger, self._principal, self._request_id, worst, 1, why=why)
        self._observer.reserved(worst)
        self.holds[index] = hold

    async def settle(
        self,
        index: int,
        usage: Usage,
        outcome: str,
        timing: tuple[float, float] | None = None,
        *,
        cost: int | None = None,
        end: bool = True,
    ) -> int:
        """Charge `usage` (at `cost`, when a loop's round is charged what its cumulative cost
        adds) and end its hold; `end` False: a loop's round, the generation goes on. `timing`:
        (seconds to the first token, seconds from it to the end), when measured. Returns the
        amount charged: capped at the hold; 0 when the generation had ended already."""
        if not self._open[index] or (end and not self._end(index)):
            return 0
        hold = self.holds[index]
        self.holds[index] = None  # settled (or, if that fails, released) below: never again
        cost = self.price.cost(usage) if cost is None else cost
        if hold is not None and cost > hold.amount_micros:
            log.warning(
                "request %s: usage reported beyond its hold (%d > %d micro-USD); charged the hold",
                self._request_id,
                cost,
                hold.amount_micros,
            )
            cost = hold.amount_micros
        row = UsageRow(
            account_id=self._principal.account_id,
            key_id=self._principal.key_id,
            request_id=self._request_id,
            protocol=self._protocol,
            model=self._model_id,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cost_micros=cost,
            outcome=outcome,
            ttft_ms=round(timing[0] * 1000) if timing else None,
            decode_ms=round(timing[1] * 1000) if timing else None,
        )
        try:
            await self._settle_hook(hold, row)
        except BaseException:
            if hold is not None:  # the settlement rolled back: give the hold back instead
                await asyncio.shield(self._give_back(hold))
            raise
        self._forget(hold)
        await self._record_tokens(usage.completion_tokens)
        return cost

    async def release(self, index: int) -> None:
        """End generation `index` unspent (once): its hold, if any, given back."""
        if not self._end(index):
            return
        hold = self.holds[index]
        self.holds[index] = None
        if hold is not None:
            await self._give_back(hold)

    def _end(self, index: int) -> bool:
        """Mark generation `index` ended (once: False if it had already) and free its place."""
        if not self._open[index]:
            return False
        self._open[index] = False
        self._free_place()
        return True

    async def _give_back(self, hold: Hold) -> None:
        await self._ledger.release(hold)
        self._forget(hold)

    def _forget(self, hold: Hold | None) -> None:
        """A hold settled or released: no longer outstanding (for the reserved-credit gauge)."""
        if hold is not None:
            self._observer.reserved(-hold.amount_micros)
