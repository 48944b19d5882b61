"""`kimiserve accounts …`: the account's webhook signing secret."""

from __future__ import annotations

import argparse

from kimiserve.services import open_platform
from kimiserve.settings import Settings


async def run(settings: Settings, args: argparse.Namespace) -> int:
    platform = await open_platform(settings)
    try:
        if args.accounts_command == "webhook-secret":
            account = await platform.account_store.find_account_by_name(args.account)
            if account is None:
                print(f"No account {args.account!r}.")
                return 1
            print(f"Webhook signing secret of account {account.name!r} (Standard Webhooks, HMAC-SHA256):")
            print(account.webhook_secret)
            return 0
        return 2
    finally:
        await platform.aclose()
