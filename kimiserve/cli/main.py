"""The kimiserve command line: thin wrappers over the platform and the app."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from kimiserve.cli.output import add_limit_options
from kimiserve.errors import KimiserveError
from kimiserve.platform.api_keys import DEFAULT_SCOPES, SCOPES
from kimiserve.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        k: v
        for k, v in {
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
            "data_dir": getattr(args, "data_dir", None),
            "models_file": getattr(args, "models_file", None),
        }.items()
        if v is not None
    }
    if getattr(args, "open_mode", False):
        overrides["open_mode"] = True
    return Settings(**overrides)


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, help="data directory (default ./kimiserve-data)")


def _add_common(p: argparse.ArgumentParser) -> None:
    _add_data_dir(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


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
    create.add_argument(
        "--scopes",
        default=",".join(sorted(DEFAULT_SCOPES)),
        help=f"comma-separated, of {', '.join(SCOPES)}, or 'all' (default: all but admin)",
    )
    create.add_argument("--models", help="comma-separated model names the key may use (default: every model)")
    add_limit_options(create)
    _add_common(create)
    listing = keys_sub.add_parser("list", help="list keys (ids, scopes, limits; never the secrets)")
    listing.add_argument("--account", help="only this account's keys")
    _add_common(listing)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    _add_data_dir(revoke)

    accounts = sub.add_parser("accounts", help="manage accounts, balances and limits")
    accounts_sub = accounts.add_subparsers(dest="accounts_command", required=True)
    a_create = accounts_sub.add_parser("create", help="create an account (unmetered until topped up)")
    a_create.add_argument("name")
    _add_common(a_create)
    _add_common(accounts_sub.add_parser("list", help="list accounts with balances and limits"))
    a_show = accounts_sub.add_parser("show", help="an account's balance, limits, keys, usage and ledger")
    a_show.add_argument("account", help="account name or id")
    _add_common(a_show)
    top_up = accounts_sub.add_parser("top-up", help="add credit (makes an unmetered account metered)")
    top_up.add_argument("account", help="account name or id")
    top_up.add_argument("amount_usd", help="dollars to add, e.g. 10 or 0.25")
    top_up.add_argument("--note", help="a note kept with the ledger entry")
    _add_common(top_up)
    set_limits = accounts_sub.add_parser("set-limits", help="set an account's rate limits")
    set_limits.add_argument("account", help="account name or id")
    add_limit_options(set_limits)
    _add_common(set_limits)
    secret = accounts_sub.add_parser(
        "webhook-secret", help="show the secret webhooks are signed with; printed alone on the last line"
    )
    secret.add_argument("--account", default="default", help="account name (default: default)")
    _add_data_dir(secret)
    models = sub.add_parser("models", help="served models and their upstreams")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    check = models_sub.add_parser("check", help="validate the models file and probe every upstream")
    check.add_argument("--models-file", type=Path, help="TOML models file (default $KIMISERVE_MODELS_FILE)")
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")

    search = sub.add_parser("search", help="the local index of the built-in search tool")
    search_sub = search.add_subparsers(dest="search_command", required=True)
    s_add = search_sub.add_parser("add", help="index text/Markdown files (or every one in a directory)")
    s_add.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    s_add.add_argument("--url", help="the URL to cite for the document (one file only; default file://PATH)")
    _add_data_dir(s_add)
    _add_common(search_sub.add_parser("list", help="list the indexed documents"))
    s_query = search_sub.add_parser("query", help="search as the built-in tool does (SearXNG if set)")
    s_query.add_argument("query")
    s_query.add_argument("--limit", type=int, default=5, help="most hits to show (default 5)")
    _add_common(s_query)
    db = sub.add_parser("db", help="the database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    _add_data_dir(db_sub.add_parser("migrate", help="apply pending migrations (under the migration lock)"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = _settings(args)
    if args.command == "serve":
        from kimiserve.cli.serve import serve

        return serve(settings)
    from kimiserve.cli import accounts, db, keys, models, search

    command = {
        "accounts": accounts.run,
        "keys": keys.run,
        "models": models.run,
        "search": search.run,
        "db": db.run,
    }[args.command]
    try:
        return asyncio.run(command(settings, args))
    except KimiserveError as exc:
        print(f"kimiserve: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
