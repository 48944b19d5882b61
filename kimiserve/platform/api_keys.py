"""API keys: `ks-<key id>-<secret>`, stored as a SHA-256 hash, compared in constant time.

The key id is public (it is how a key is found); the secret is 32 random bytes, so a fast
hash is the right tool (no password stretching needed for high-entropy secrets).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

from kimiserve.errors import AuthenticationFailed
from kimiserve.storage.sql.accounts import SqlAccountStore

PREFIX = "ks"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the account every task, usage record and price belongs to."""

    account_id: str
    key_id: str


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _key_id(key: str) -> str | None:
    parts = key.split("-", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1]


class ApiKeys:
    def __init__(self, store: SqlAccountStore) -> None:
        self._store = store

    async def create(self, account_id: str, name: str) -> str:
        """Create a key and return its text: the only time the text exists outside the client."""
        key_id = secrets.token_hex(6)
        key = f"{PREFIX}-{key_id}-{secrets.token_urlsafe(32)}"
        await self._store.create_key(key_id, account_id, name, _hash(key))
        return key

    async def authenticate(self, key: str | None) -> Principal:
        if not key:
            raise AuthenticationFailed("An API key is required.", code="missingApiKey", parameter="apiKey")
        key_id = _key_id(key)
        row = await self._store.get_key(key_id) if key_id else None
        # Compare even when no row was found, so timing does not tell which part was wrong.
        expected = row.secret_hash if row is not None else _hash(uuid.uuid4().hex)
        if not hmac.compare_digest(expected, _hash(key)) or row is None or row.revoked:
            raise AuthenticationFailed("Invalid API key.", parameter="apiKey")
        return Principal(account_id=row.account_id, key_id=row.id)
