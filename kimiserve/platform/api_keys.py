"""API keys: `ks-<key id>-<secret>`, stored as a SHA-256 hash, compared in constant time.

The key id is public (it is how a key is found); the secret is 32 random bytes, so a fast
hash is the right tool (no password stretching needed for high-entropy secrets). A key carries
scopes, an optional model allowlist and rate limits; its account's limits come with it.

Authentication is on every request, so a key's row is kept in memory for `cache_s` (1 s by
default, `KIMISERVE_KEY_CACHE_S`; 0 keeps nothing) after it was read. Every change made through
`Admin` (revoking, limits, a top-up that makes an account metered) forgets the rows it touches
in this process at once, and, with Redis (`publish`), on every replica; a change made by a
process that does not publish (a replica without Redis) takes effect within `cache_s`. The
secret is still hashed and compared on every request: the cache holds the row, never a verdict
on the key text.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable

from kimiserve.domain.ports import AccountStore, KeyRow, Limits
from kimiserve.domain.principal import SCOPES as SCOPES
from kimiserve.domain.principal import Principal
from kimiserve.errors import AuthenticationFailed, InvalidRequest

PREFIX = "ks"

DEFAULT_SCOPES: frozenset[str] = frozenset({"inference", "tasks:read", "media:upload"})


def parse_scopes(text: str) -> frozenset[str]:
    """`inference,tasks:read` (commas or spaces) or `all`; unknown names are refused."""
    names = {part for part in text.replace(",", " ").split() if part}
    if names == {"all"}:
        return frozenset(SCOPES)
    unknown = names - set(SCOPES)
    if unknown or not names:
        raise InvalidRequest(
            f"Unknown scope(s) {', '.join(sorted(unknown)) or '(none given)'}; scopes are "
            f"{', '.join(SCOPES)} or all.",
            parameter="scopes",
        )
    return frozenset(names)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _key_id(key: str) -> str | None:
    parts = key.split("-", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1]


def principal_of(row: KeyRow) -> Principal:
    return Principal(
        account_id=row.account_id,
        key_id=row.id,
        scopes=row.scopes,
        models=row.models,
        key_limits=row.limits,
        account_limits=row.account_limits,
        metered=row.account_metered,
    )


CACHED_KEYS = 10_000  # rows kept at most; the oldest read goes first


class ApiKeys:
    def __init__(self, store: AccountStore, *, cache_s: float = 1.0) -> None:
        self._store = store
        self._cache_s = cache_s
        self._rows: dict[str, tuple[float, KeyRow]] = {}  # key id → (read at, row), oldest first
        # Tells the other replicas of a change ("key" or "account", its id): set with Redis.
        self.publish: Callable[[str, str], Awaitable[None]] | None = None

    async def _row(self, key_id: str) -> KeyRow | None:
        now = time.monotonic()
        cached = self._rows.get(key_id)
        if cached is not None and now - cached[0] < self._cache_s:
            return cached[1]
        row = await self._store.get_key(key_id)
        self._rows.pop(key_id, None)
        if row is not None and self._cache_s > 0:  # unknown ids are not kept: no growth from guesses
            if len(self._rows) >= CACHED_KEYS:
                del self._rows[next(iter(self._rows))]
            self._rows[key_id] = (now, row)
        return row

    async def changed_key(self, key_id: str) -> None:
        """The key was changed here: forget its row here and on every replica."""
        self.forget_key(key_id)
        if self.publish is not None:
            await self.publish("key", key_id)

    async def changed_account(self, account_id: str) -> None:
        """The account was changed here: forget its keys' rows here and on every replica."""
        self.forget_account(account_id)
        if self.publish is not None:
            await self.publish("account", account_id)

    def forget_key(self, key_id: str) -> None:
        """The key changed (revoked, new limits): read it again on its next use."""
        self._rows.pop(key_id, None)

    def forget_account(self, account_id: str) -> None:
        """The account changed (limits, metered): read its keys again on their next use."""
        for key_id in [k for k, (_, row) in self._rows.items() if row.account_id == account_id]:
            del self._rows[key_id]

    async def create(
        self,
        account_id: str,
        name: str,
        *,
        scopes: frozenset[str] = DEFAULT_SCOPES,
        models: tuple[str, ...] | None = None,
        limits: Limits | None = None,
    ) -> tuple[str, str]:
        """Create a key; return (key id, key text): the only time the text exists outside the client."""
        key_id = secrets.token_hex(6)
        key = f"{PREFIX}-{key_id}-{secrets.token_urlsafe(32)}"
        await self._store.create_key(
            key_id, account_id, name, _hash(key), scopes=scopes, models=models, limits=limits or Limits()
        )
        return key_id, key

    async def authenticate(self, key: str | None) -> Principal:
        if not key:
            raise AuthenticationFailed("An API key is required.", code="missingApiKey", parameter="apiKey")
        key_id = _key_id(key)
        row = await self._row(key_id) if key_id else None
        # Compare even when no row was found, so timing does not tell which part was wrong.
        expected = row.secret_hash if row is not None else _hash(uuid.uuid4().hex)
        if not hmac.compare_digest(expected, _hash(key)) or row is None or row.revoked:
            raise AuthenticationFailed("Invalid API key.", parameter="apiKey")
        return principal_of(row)
