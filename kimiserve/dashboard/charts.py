"""The overview's plots: grouped usage rows (one per bucket, model and key) → uPlot's column data.

uPlot takes `[xs, ys1, ys2, …]`, one column per series, `null` where a series has no point.
Every bucket of the range is present (zeros for quiet ones), so the time axis is even.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kimiserve.storage.sql.error_counts import ErrorBucket
from kimiserve.storage.sql.reports import UsageBucket

# range name → (seconds shown, bucket seconds)
RANGES: dict[str, tuple[int, int]] = {
    "1h": (3600, 60),
    "24h": (86_400, 900),
    "7d": (7 * 86_400, 3600),
    "30d": (30 * 86_400, 6 * 3600),
}
DEFAULT_RANGE = "24h"


@dataclass(frozen=True)
class Window:
    name: str
    since: float
    until: float
    bucket_s: int

    @classmethod
    def of(cls, name: str | None, now: float) -> Window:
        name = name if name in RANGES else DEFAULT_RANGE
        span, bucket_s = RANGES[name]
        until = (int(now) // bucket_s + 1) * bucket_s  # the current bucket, whole
        return cls(name, until - span, until, bucket_s)

    def xs(self) -> list[int]:
        return list(range(int(self.since), int(self.until), self.bucket_s))


def _columns(
    window: Window,
    rows: list[UsageBucket],
    series_of: Callable[[UsageBucket], str],
    value: Callable[[UsageBucket], float],
) -> tuple[list[str], list[list[float]]]:
    xs = window.xs()
    at = {x: i for i, x in enumerate(xs)}
    columns: dict[str, list[float]] = {}
    for row in rows:
        i = at.get(row.bucket)
        if i is None:
            continue
        column = columns.setdefault(series_of(row), [0.0] * len(xs))
        column[i] += value(row)
    names = sorted(columns)
    return names, [columns[n] for n in names]


def _ratio_column(
    window: Window, rows: list[UsageBucket], part: Callable[[UsageBucket], tuple[float, float]], scale: float
) -> list[float | None]:
    """One overall series of sum(numerator) / sum(denominator) per bucket; None where nothing was measured."""
    xs = window.xs()
    at = {x: i for i, x in enumerate(xs)}
    num = [0.0] * len(xs)
    den = [0.0] * len(xs)
    for row in rows:
        i = at.get(row.bucket)
        if i is None:
            continue
        n, d = part(row)
        num[i] += n
        den[i] += d
    return [round(scale * n / d, 1) if d else None for n, d in zip(num, den, strict=True)]


def error_columns(window: Window, errors: list[ErrorBucket]) -> tuple[list[str], list[list[float]]]:
    """One series per `protocol code`, a count per bucket."""
    xs = window.xs()
    at = {x: i for i, x in enumerate(xs)}
    columns: dict[str, list[float]] = {}
    for e in errors:
        i = at.get(e.bucket)
        if i is not None:
            columns.setdefault(f"{e.protocol} {e.code}", [0.0] * len(xs))[i] += e.count
    names = sorted(columns)
    return names, [columns[n] for n in names]


def overview(
    window: Window,
    rows: list[UsageBucket],
    key_names: dict[str, str],
    errors: list[ErrorBucket] | None = None,
) -> dict[str, Any]:
    """The overview's totals and plot specs (title, unit, series labels, columns); `errors` (for
    admins) adds the errors-by-code plot."""
    xs = window.xs()

    def by_model(row: UsageBucket) -> str:
        return row.model

    def by_key(row: UsageBucket) -> str:
        if row.key_id is None:
            return "(no key)"
        name = key_names.get(row.key_id)
        return f"{name} ({row.key_id})" if name else row.key_id

    def plot(
        title: str, unit: str, names: list[str], columns: list[Any], *, gaps: bool = False
    ) -> dict[str, Any]:
        """`gaps`: the series has no value (null) in buckets where nothing was measured."""
        return {"title": title, "unit": unit, "labels": names, "data": [xs, *columns], "gaps": gaps}

    def cost(row: UsageBucket) -> float:
        return row.cost_micros / 1_000_000

    def tokens(row: UsageBucket) -> float:
        return row.prompt_tokens + row.completion_tokens

    def requests(row: UsageBucket) -> float:
        return row.requests

    plots = [
        plot("Requests by model", "requests", *_columns(window, rows, by_model, requests)),
        plot("Tokens by model", "tokens", *_columns(window, rows, by_model, tokens)),
        plot("Cost by model", "USD", *_columns(window, rows, by_model, cost)),
        plot("Requests by key", "requests", *_columns(window, rows, by_key, requests)),
        plot("Cost by key", "USD", *_columns(window, rows, by_key, cost)),
        plot(
            "Time to first token (mean)",
            "ms",
            ["all models"],
            [_ratio_column(window, rows, lambda r: (r.ttft_ms_sum, r.timed), 1.0)],
            gaps=True,
        ),
        plot(
            "Output tokens per second (after the first token)",
            "tokens/s",
            ["all models"],
            [_ratio_column(window, rows, lambda r: (r.decode_tokens, r.decode_ms), 1000.0)],
            gaps=True,
        ),
    ]
    if errors is not None:
        plots.append(plot("Errors by code", "requests", *error_columns(window, errors)))
    totals = {
        "requests": sum(r.requests for r in rows),
        "prompt_tokens": sum(r.prompt_tokens for r in rows),
        "completion_tokens": sum(r.completion_tokens for r in rows),
        "cost_usd": f"{sum(r.cost_micros for r in rows) / 1_000_000:.6f}",
    }
    return {"range": window.name, "bucket_s": window.bucket_s, "totals": totals, "plots": plots}
