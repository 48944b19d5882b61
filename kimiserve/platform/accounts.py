"""Accounts: the default operator account and new ones."""

from __future__ import annotations

import base64
import secrets
import uuid

from kimiserve.domain.ports import AccountRow, AccountStore

DEFAULT_ACCOUNT = "default"


class Accounts:
    def __init__(self, store: AccountStore) -> None:
        self._store = store

    async def get_or_create(self, name: str = DEFAULT_ACCOUNT) -> AccountRow:
        existing = await self._store.find_account_by_name(name)
        if existing is not None:
            return existing
        # Standard Webhooks secrets are standard-alphabet base64 after the prefix.
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        return await self._store.create_account(str(uuid.uuid4()), name, secret)

    async def get(self, account_id: str) -> AccountRow | None:
        return await self._store.get_account(account_id)
