"""Readable tables and `--json` output for the CLI, and the shared limit options."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from kimiserve.domain.ports import Limits


def show(value: Any, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(value, indent=2))
    elif isinstance(value, dict):
        width = max((len(k) for k in value), default=0)
        for key, item in value.items():
            print(f"{key:<{width}}  {item}")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


NO_LIMIT = 0  # what `none` parses to: clear the limit


def _limit(text: str) -> int:
    if text.lower() in ("none", "off", "unlimited"):
        return NO_LIMIT
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("a limit must be a positive integer or 'none'")
    return value


def add_limit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rpm", type=_limit, help="requests per minute ('none': no limit)")
    p.add_argument("--tpm", type=_limit, help="tokens per minute ('none': no limit)")
    p.add_argument("--concurrency", type=_limit, help="requests at once ('none': no limit)")


def limits_of(args: argparse.Namespace, current: Limits | None = None) -> Limits:
    """The limits given on the command line; options left out keep `current`."""
    base = current or Limits()

    def pick(given: int | None, kept: int | None) -> int | None:
        if given is None:
            return kept
        return None if given == NO_LIMIT else given

    return Limits(
        rpm=pick(args.rpm, base.rpm),
        tpm=pick(args.tpm, base.tpm),
        concurrency=pick(args.concurrency, base.concurrency),
    )
