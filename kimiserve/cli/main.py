"""The kimiserve command line: thin wrappers over the platform and the app."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from kimiserve.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        k: v
        for k, v in {
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
            "data_dir": getattr(args, "data_dir", None),
        }.items()
        if v is not None
    }
    if getattr(args, "open_mode", False):
        overrides["open_mode"] = True
    return Settings(**overrides)


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, help="data directory (default ./kimiserve-data)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kimiserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the server")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port for HTTP, SSE and WebSocket (default 8080)")
    serve.add_argument(
        "--open-mode", action="store_true", help="serve WITHOUT authentication (development only)"
    )
    _add_data_dir(serve)

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key; prints it once, alone on the last line")
    create.add_argument("--name", default="default", help="a label for the key")
    create.add_argument("--account", default="default", help="account name (created if new)")
    _add_data_dir(create)
    listing = keys_sub.add_parser("list", help="list keys (ids and names, never the secrets)")
    _add_data_dir(listing)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    _add_data_dir(revoke)

    accounts = sub.add_parser("accounts", help="inspect accounts")
    accounts_sub = accounts.add_subparsers(dest="accounts_command", required=True)
    secret = accounts_sub.add_parser(
        "webhook-secret", help="show the secret webhooks are signed with; printed alone on the last line"
    )
    secret.add_argument("--account", default="default", help="account name (default: default)")
    _add_data_dir(secret)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = _settings(args)
    if args.command == "serve":
        from kimiserve.cli.serve import serve

        return serve(settings)
    if args.command == "accounts":
        from kimiserve.cli import accounts

        return asyncio.run(accounts.run(settings, args))
    from kimiserve.cli import keys

    return asyncio.run(keys.run(settings, args))


if __name__ == "__main__":
    sys.exit(main())
