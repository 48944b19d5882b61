"""What the domain needs from storage: small protocols, and the rows they return.

`storage/sql` implements these (SQLite by default); the domain and platform depend on these
protocols only, never on a concrete store. Money is integer micro-USD everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from kimiserve.domain.principal import Principal
    from kimiserve.domain.types import GenerationRequest, MediaKind

# ---- rows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """Rate limits; None means no limit of that kind."""

    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens (prompt + completion) per minute
    concurrency: int | None = None  # requests running at once

    def any(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.concurrency))


@dataclass(frozen=True)
class WindowState:
    """One window's state for OpenAI's `x-ratelimit-*` headers (the tightest of key and account)."""

    limit: int
    remaining: int
    reset_s: float


@dataclass(frozen=True)
class AccountRow:
    id: str
    name: str
    balance_micros: int | None  # None: unmetered
    reserved_micros: int
    webhook_secret: str
    limits: Limits = field(default_factory=Limits)

    @property
    def metered(self) -> bool:
        return self.balance_micros is not None


@dataclass(frozen=True)
class KeyRow:
    id: str
    account_id: str
    name: str
    secret_hash: str
    revoked: bool
    scopes: frozenset[str]
    models: tuple[str, ...] | None  # None: every model
    limits: Limits = field(default_factory=Limits)
    account_limits: Limits = field(default_factory=Limits)
    # Whether its account is metered, read with the key by `get_key` (None where not read).
    account_metered: bool | None = None


@dataclass(frozen=True)
class UsageRow:
    account_id: str
    key_id: str | None
    request_id: str
    protocol: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_micros: int
    outcome: str = "completed"  # completed | disconnected | interrupted
    ttft_ms: int | None = None  # engine start to first token; None when not measured
    decode_ms: int | None = None  # first token to the end (tokens/s = completion_tokens / this)


@dataclass(frozen=True)
class MediaRow:
    id: str
    account_id: str
    content_type: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class OutboxRow:
    """One webhook delivery in the durable outbox."""

    id: str
    account_id: str
    task_uuid: str
    url: str
    body: str
    status: str  # pending | delivered | failed
    attempts: int
    next_attempt_at: float
    created_at: float
    last_error: str | None


@dataclass(frozen=True)
class LedgerEntry:
    account_id: str
    kind: str  # topup | reservation | settlement | release | adjustment
    amount_micros: int  # moves the balance
    hold_micros: int  # moves the reserved amount
    reservation_id: str | None
    request_id: str | None
    note: str | None


@dataclass(frozen=True)
class Hold:
    """Credit held for one generation until it is settled or released (exactly once: the
    Admission that owns it sees to that)."""

    id: str
    account_id: str
    request_id: str
    amount_micros: int


@dataclass(frozen=True)
class TaskRow:
    task_uuid: str
    account_id: str
    task_type: str
    delivery: str
    status: str  # processing | success | error
    request: dict[str, Any]
    results: list[dict[str, Any]] | None
    error: dict[str, Any] | None


class TaskExists(Exception):
    """The taskUUID was used before."""


class InsufficientBalance(Exception):
    """A reservation the account's available balance cannot cover."""


# ---- stores -------------------------------------------------------------------------------


class AccountStore(Protocol):
    async def create_account(self, account_id: str, name: str, webhook_secret: str) -> AccountRow: ...
    async def get_account(self, account_id: str) -> AccountRow | None: ...
    async def find_account_by_name(self, name: str) -> AccountRow | None: ...
    async def list_accounts(self) -> list[AccountRow]: ...
    async def set_account_limits(self, account_id: str, limits: Limits) -> bool: ...
    async def create_key(
        self,
        key_id: str,
        account_id: str,
        name: str,
        secret_hash: str,
        *,
        scopes: frozenset[str],
        models: tuple[str, ...] | None,
        limits: Limits,
    ) -> None: ...
    async def get_key(self, key_id: str) -> KeyRow | None: ...
    async def set_key_limits(self, key_id: str, limits: Limits) -> bool: ...
    async def revoke_key(self, key_id: str) -> bool: ...
    async def list_keys(self, account_id: str | None = None) -> list[KeyRow]: ...


class LedgerStore(Protocol):
    async def reserve(self, holds: list[Hold]) -> None:
        """Take every hold (one account's) at once, or raise InsufficientBalance (none taken)."""

    async def settle(self, hold: Hold | None, usage: UsageRow) -> None:
        """Charge the usage's cost, end its hold, and write the usage row: one transaction.
        `hold` None: an unmetered account, the usage row alone."""

    async def release(self, hold: Hold) -> None:
        """Give a hold back unspent."""

    async def top_up(self, account_id: str, amount_micros: int, note: str | None) -> int:
        """Add money (an unmetered account becomes metered); return the new balance."""

    async def release_all_held(self, keep_owners: Collection[str] = ()) -> int:
        """Release every open hold except those taken by a replica in `keep_owners` (the live
        ones): holds a crash or restart left behind; return how many."""

    async def entries(self, account_id: str) -> list[LedgerEntry]: ...


class UsageStore(Protocol):
    async def for_account(self, account_id: str) -> list[UsageRow]: ...


class TaskStore(Protocol):
    async def create(
        self, task_uuid: str, account_id: str, task_type: str, delivery: str, request: dict[str, Any]
    ) -> None:
        """Record a new task as `processing`; raise TaskExists when the UUID was used before."""

    async def finish(
        self,
        task_uuid: str,
        *,
        results: list[dict[str, Any]] | None = None,
        error: dict[str, Any] | None = None,
    ) -> bool:
        """End a `processing` task; False if it had already ended (the first ending wins)."""

    async def get(self, task_uuid: str) -> TaskRow | None: ...

    async def delete(self, task_uuid: str, account_id: str) -> bool:
        """Remove an ended task of `account_id`; False if there is none (or it is another's)."""

    async def renew_lease(self) -> None:
        """Extend this replica's lease, and with it the lease of every task it is running."""

    async def live_replicas(self) -> set[str]:
        """The replicas whose lease has not expired."""

    async def end_abandoned(self, error: dict[str, Any], *, including_own: bool) -> list[TaskRow]:
        """End with `error` every `processing` task whose lease has expired (and, at start-up,
        `including_own`, those this replica's previous run left); return the tasks ended."""


class Observer(Protocol):
    """What the pipeline reports for metrics (implemented with prometheus-client in http/)."""

    def first_token(self, model: str, seconds: float) -> None: ...
    def generation(self, model: str, output_tokens: int, seconds: float) -> None: ...
    def reserved(self, delta_micros: int) -> None: ...


class NoObserver:
    def first_token(self, model: str, seconds: float) -> None:
        return None

    def generation(self, model: str, output_tokens: int, seconds: float) -> None:
        return None

    def reserved(self, delta_micros: int) -> None:
        return None


# ---- rate limits (platform/rate_limits.py implements these) --------------------------------


class Permit(Protocol):
    """An admitted request's place under its key's and account's limits, until `release()`."""

    @property
    def requests(self) -> WindowState | None: ...
    @property
    def tokens(self) -> WindowState | None: ...
    async def record_tokens(self, tokens: int) -> None: ...
    def release(self) -> None: ...


class Limiter(Protocol):
    async def acquire(self, principal: Principal, tokens: int) -> Permit:
        """Admit one request expected to use `tokens` (its prompt), or raise RateLimited."""
        ...


# ---- media (media/resolve.py implements this) ----------------------------------------------


class MediaResolver(Protocol):
    async def resolve(
        self,
        account_id: str,
        request: GenerationRequest,
        parameter_of: Callable[[int, MediaKind, int], str],
    ) -> GenerationRequest:
        """The request with every message's image and video references replaced by data URIs;
        a reference that cannot be had raises, named by `parameter_of(message, kind, index)`."""
        ...


# ---- webhook outbox, media rows, error counts (storage/sql implements these) ---------------


class OutboxStore(Protocol):
    async def enqueue(self, delivery_id: str, account_id: str, task_uuid: str, url: str, body: str) -> bool:
        """Record a delivery due now; False when that id was enqueued before."""
        ...

    async def claim_due(self, limit: int, lease_s: float) -> list[OutboxRow]:
        """Pending deliveries that are due, each leased to the caller for `lease_s`."""
        ...

    async def next_due_at(self) -> float | None: ...
    async def mark_delivered(self, delivery_id: str) -> None: ...
    async def mark_failed(self, delivery_id: str, error: str) -> None: ...
    async def retry_later(self, delivery_id: str, error: str, next_attempt_at: float) -> None: ...
    async def release(self, delivery_id: str) -> None: ...


class MediaRows(Protocol):
    async def add(self, row: MediaRow) -> None: ...
    async def get(self, media_id: str) -> MediaRow | None: ...


class ErrorCounts(Protocol):
    async def add(self, counts: Mapping[tuple[int, str, str], int]) -> None:
        """Add refused/failed request counts per (minute, protocol, code)."""
        ...
