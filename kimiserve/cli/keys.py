"""`kimiserve keys …`: create, list, revoke."""

from __future__ import annotations

import argparse

from kimiserve.services import open_platform
from kimiserve.settings import Settings


async def run(settings: Settings, args: argparse.Namespace) -> int:
    platform = await open_platform(settings)
    try:
        if args.keys_command == "create":
            account = await platform.accounts.get_or_create(args.account)
            key = await platform.keys.create(account.id, args.name)
            print(f"Created API key {args.name!r} for account {account.name!r}. It is shown only once:")
            print(key)
            return 0
        if args.keys_command == "list":
            for row in await platform.account_store.list_keys():
                state = "revoked" if row.revoked else "active"
                print(f"{row.id}\t{row.name}\t{state}")
            return 0
        if args.keys_command == "revoke":
            if await platform.account_store.revoke_key(args.key_id):
                print(f"Revoked key {args.key_id}.")
                return 0
            print(f"No active key {args.key_id}.")
            return 1
        return 2
    finally:
        await platform.aclose()
