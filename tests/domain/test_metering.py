"""The metering rules on an in-memory ledger: hold, settle, release, the cap at the hold, a client
that leaves, an upstream that dies mid-stream, and the cost reported being the cost charged."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from kimiserve.domain.admission import Admission, Admissions
from kimiserve.domain.metering import Meter
from kimiserve.domain.ports import Hold
from kimiserve.domain.principal import Principal
from kimiserve.domain.results import Accumulator
from kimiserve.domain.served import ServedModel, ServedModels
from kimiserve.domain.types import (
    Charged,
    Event,
    Finished,
    GenerationRequest,
    Message,
    Sampling,
    TextDelta,
    Usage,
)
from kimiserve.engines.fake import FakeEngine
from kimiserve.errors import EngineError, InsufficientCredits
from kimiserve.platform.prices import Price
from kimiserve.platform.rate_limits import RateLimiter
from tests.domain.memory import MemoryLedger

PRICE = Price(1_000_000, 2_000_000, 500_000)  # $1 / $2 / $0.50 per million: one micro-USD per token
PAYER = Principal(account_id="acct", key_id="key", metered=True)


class NoAccounts:
    async def get_account(self, account_id: str) -> Any:
        raise AssertionError("the key says whether the account is metered")


def served(engine: FakeEngine) -> ServedModel:
    return ServedModel(id="kimi-k2.6", aliases=(), engine=engine, price=PRICE)


def request(text: str = "one two three four", max_tokens: int = 100) -> GenerationRequest:
    return GenerationRequest(
        model="kimi-k2.6",
        messages=(Message(role="user", content=text),),
        sampling=Sampling(max_tokens=max_tokens),
    )


async def admit(engine: FakeEngine, ledger: MemoryLedger, **kw: Any) -> tuple[Admissions, Admission]:
    model = served(engine)
    admissions = Admissions(ServedModels([model]), ledger, RateLimiter(), NoAccounts())  # type: ignore[arg-type]
    admission = await admissions.admit(PAYER, model, kw.pop("req", request()), protocol="test", **kw)
    return admissions, admission


def meter(ledger: MemoryLedger, holds: list[Hold | None]) -> tuple[Meter, list[str]]:
    ended: list[str] = []

    async def record(_: int) -> None:
        return None

    return (
        Meter(
            ledger=ledger,
            settle=ledger.settle,
            observer=_Quiet(),
            principal=PAYER,
            request_id="r1",
            protocol="test",
            model_id="kimi-k2.6",
            price=PRICE,
            holds=holds,
            free_place=lambda: ended.append("place"),
            record_tokens=record,
        ),
        ended,
    )


class _Quiet:
    def first_token(self, model: str, seconds: float) -> None: ...
    def generation(self, model: str, output_tokens: int, seconds: float) -> None: ...
    def reserved(self, delta_micros: int) -> None: ...


async def test_settle_charges_the_cost_ends_the_hold_and_writes_one_row() -> None:
    ledger = MemoryLedger(balance=1000)
    hold = Hold("h1", "acct", "r1", 500)
    await ledger.reserve([hold])
    m, places = meter(ledger, [hold])
    charged = await m.settle(0, Usage(100, 50), "completed")
    assert charged == 100 + 2 * 50
    assert ledger.balance == 1000 - 200 and ledger.held == 0
    assert [(r.cost_micros, r.outcome) for r in ledger.rows] == [(200, "completed")]
    assert places == ["place"]
    # Once: a second settlement or a release does nothing (the ledger asserts a hold ends once).
    assert await m.settle(0, Usage(100, 50), "completed") == 0
    await m.release(0)
    assert len(ledger.rows) == 1 and places == ["place"]


async def test_a_cost_beyond_the_hold_is_charged_the_hold() -> None:
    ledger = MemoryLedger(balance=1000)
    hold = Hold("h1", "acct", "r1", 150)
    await ledger.reserve([hold])
    m, _ = meter(ledger, [hold])
    assert await m.settle(0, Usage(100, 400), "completed") == 150
    assert ledger.balance == 850
    assert ledger.rows[0].completion_tokens == 400 and ledger.rows[0].cost_micros == 150


async def test_release_gives_the_hold_back_and_charges_nothing() -> None:
    ledger = MemoryLedger(balance=1000)
    hold = Hold("h1", "acct", "r1", 500)
    await ledger.reserve([hold])
    m, places = meter(ledger, [hold])
    await m.release(0)
    assert ledger.balance == 1000 and ledger.held == 0 and ledger.rows == []
    assert places == ["place"]


async def test_admission_holds_the_worst_case_and_refuses_what_the_balance_cannot_cover() -> None:
    ledger = MemoryLedger(balance=1000)
    admissions, admission = await admit(FakeEngine(), ledger, n=2)
    worst = PRICE.worst_case(admission.prompt_tokens, 100)
    assert ledger.held == 2 * worst
    with pytest.raises(InsufficientCredits):
        await admit(FakeEngine(), MemoryLedger(balance=worst - 1))
    await admission.aclose()  # never run: both released
    assert ledger.held == 0 and ledger.rows == [] and admissions.outstanding == {}


async def test_a_finished_generation_reports_the_cost_it_was_charged() -> None:
    # The engine reports more output than the hold covers (an upstream's re-ask): the client is
    # told the capped amount, which is what the ledger charged.
    script: list[list[Event]] = [[TextDelta("x"), Usage(10, 5000), Finished("stop")]]
    ledger = MemoryLedger(balance=100_000)
    _, admission = await admit(FakeEngine(script=script), ledger, req=request(max_tokens=10))
    async with admission:
        events = [e async for e in admission.stream(0)]
    [charged] = [e for e in events if isinstance(e, Charged)]
    hold_amount = PRICE.worst_case(admission.prompt_tokens, 10)
    assert charged.cost_micros == hold_amount == ledger.rows[0].cost_micros
    assert 100_000 - ledger.balance == hold_amount
    acc = Accumulator(0, admission.model)
    for e in events:
        acc.add(e)
    assert acc.result().cost_micros == hold_amount


async def test_a_client_that_leaves_pays_for_what_it_got() -> None:
    ledger = MemoryLedger(balance=100_000)
    _, admission = await admit(FakeEngine(), ledger, req=request("a b c d e f g h"))
    async with admission:
        stream = admission.stream(0)
        await anext(stream)
        await anext(stream)
        await stream.aclose()  # the client left after two tokens
    [row] = ledger.rows
    assert row.outcome == "disconnected" and row.completion_tokens == 2
    assert row.cost_micros == PRICE.cost(Usage(admission.prompt_tokens, 2))
    assert ledger.held == 0


@pytest.mark.parametrize("live", [True, False])
async def test_an_upstream_that_dies_mid_stream(live: bool) -> None:
    """Streamed (live): charged what was delivered, row `interrupted`; not streamed: released."""

    class Died(EngineError):
        settles_delivered = True

    class Dying(FakeEngine):
        async def generate(self, request: GenerationRequest) -> Any:
            yield TextDelta("a")
            yield TextDelta(" b")
            raise Died("The upstream's stream ended early.")

    ledger = MemoryLedger(balance=100_000)
    _, admission = await admit(Dying(), ledger)
    async with admission:
        with pytest.raises(Died):
            async with contextlib.aclosing(admission.stream(0, live=live)) as events:
                async for _ in events:
                    pass
    assert ledger.held == 0
    if live:
        [row] = ledger.rows
        assert row.outcome == "interrupted" and row.completion_tokens == 2
    else:
        assert ledger.rows == [] and ledger.balance == 100_000
