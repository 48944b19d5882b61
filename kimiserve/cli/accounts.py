"""`kimiserve accounts …`: create, list, show, top-up, set-limits, webhook-secret."""

from __future__ import annotations

import argparse

from kimiserve.cli.output import limits_of, print_table, show
from kimiserve.platform.admin import parse_usd, usd
from kimiserve.services import open_platform
from kimiserve.settings import Settings


def _limits_text(limits: dict[str, int | None]) -> str:
    return " ".join(f"{n}={v}" for n, v in limits.items() if v is not None) or "none"


async def run(settings: Settings, args: argparse.Namespace) -> int:
    platform = await open_platform(settings, announce_key_changes=True)
    admin = platform.admin
    command = args.accounts_command
    try:
        if command == "webhook-secret":
            account = await admin.account(args.account)
            print(f"Webhook signing secret of account {account.name!r} (Standard Webhooks, HMAC-SHA256):")
            print(account.webhook_secret)
            return 0
        if command == "create":
            show(await admin.create_account(args.name), as_json=args.json or False)
            if not args.json:
                print(f"Created account {args.name!r} (unmetered until its first top-up).")
            return 0
        if command == "list":
            accounts = await admin.list_accounts()
            if args.json:
                show(accounts, as_json=True)
                return 0
            print_table(
                ["id", "name", "balance (USD)", "reserved (USD)", "limits"],
                [
                    [
                        a["id"],
                        a["name"],
                        a["balance_usd"] if a["metered"] else "unmetered",
                        usd(a["reserved_micros"]),
                        _limits_text(a["limits"]),
                    ]
                    for a in accounts
                ],
            )
            return 0
        if command == "show":
            view = await admin.show_account(args.account)
            if args.json:
                show(view, as_json=True)
                return 0
            print(f"account   {view['name']} ({view['id']})")
            print(f"balance   {view['balance_usd'] + ' USD' if view['metered'] else 'unmetered'}")
            print(f"reserved  {usd(view['reserved_micros'])} USD")
            print(f"limits    {_limits_text(view['limits'])}")
            u = view["usage"]
            print(
                f"usage     {u['generations']} generations, {u['prompt_tokens']} prompt + "
                f"{u['completion_tokens']} completion tokens, {usd(u['cost_micros'])} USD"
            )
            print(f"keys      {', '.join(k['id'] + ' (' + k['state'] + ')' for k in view['keys']) or 'none'}")
            return 0
        if command == "top-up":
            view = await admin.top_up(args.account, parse_usd(args.amount_usd), args.note)
            show(view, as_json=True) if args.json else print(
                f"Balance of {view['name']!r} is now {view['balance_usd']} USD."
            )
            return 0
        if command == "set-limits":
            current = await admin.account(args.account)
            view = await admin.set_account_limits(args.account, limits_of(args, current.limits))
            show(view, as_json=True) if args.json else print(
                f"Limits of {view['name']!r}: {_limits_text(view['limits'])}."
            )
            return 0
        return 2
    finally:
        await platform.aclose()
