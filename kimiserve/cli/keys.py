"""`kimiserve keys …`: create, list, revoke."""

from __future__ import annotations

import argparse

from kimiserve.cli.output import limits_of, print_table, show
from kimiserve.platform.api_keys import parse_scopes
from kimiserve.services import open_platform
from kimiserve.settings import Settings


async def run(settings: Settings, args: argparse.Namespace) -> int:
    platform = await open_platform(settings, announce_key_changes=True)
    admin = platform.admin
    try:
        if args.keys_command == "create":
            models = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else None
            key = await admin.create_key(
                args.account,
                args.name,
                scopes=parse_scopes(args.scopes),
                models=models,
                limits=limits_of(args),
                create_account=True,
            )
            if args.json:
                show(key, as_json=True)
                return 0
            print(
                f"Created API key {args.name!r} ({key['id']}) for account {args.account!r}, scopes "
                f"{' '.join(key['scopes'])}. It is shown only once:"
            )
            print(key["key"])
            return 0
        if args.keys_command == "list":
            keys = await admin.list_keys(args.account)
            if args.json:
                show(keys, as_json=True)
                return 0
            print_table(
                ["id", "name", "state", "scopes", "models", "limits"],
                [
                    [
                        k["id"],
                        k["name"],
                        k["state"],
                        ",".join(k["scopes"]),
                        ",".join(k["models"]) if k["models"] is not None else "all",
                        " ".join(f"{n}={v}" for n, v in k["limits"].items() if v is not None) or "-",
                    ]
                    for k in keys
                ],
            )
            return 0
        if args.keys_command == "revoke":
            if await admin.revoke_key(args.key_id):
                print(f"Revoked key {args.key_id}.")
                return 0
            print(f"No active key {args.key_id}.")
            return 1
        return 2
    finally:
        await platform.aclose()
