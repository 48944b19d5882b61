"""The dashboard overview's speed with a month of a busy server's usage, in a real browser.

    .venv/bin/python bench/dashboard.py [--days 30] [--per-day 10000] [--rounds 5]

Seeds `days × per-day` usage rows (3 models, 8 keys, spread evenly over the last `days` days)
straight into a fresh SQLite database, starts a server (fake engine: only the dashboard is
measured), signs in with Debian's chromium through Playwright and loads the overview for each
range `rounds` times. Each load reports the browser's Navigation Timing (response end, DOM
content loaded, load event) and the `plots-drawn` mark that overview.js sets once uPlot has
drawn every plot, all from navigation start, plus the bytes transferred for the page and its assets.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from playwright.sync_api import sync_playwright

from tests.serverproc import ServerProcess, create_key

MODELS = ("kimi-k2.6", "smollm2-135m-instruct", "qwen3-8b")
TIMING = """() => {
    const [nav] = performance.getEntriesByType("navigation");
    const [drawn] = performance.getEntriesByName("plots-drawn");
    const resources = performance.getEntriesByType("resource");
    const bytes = resources.reduce((a, r) => a + r.transferSize, nav.transferSize);
    return {response: nav.responseEnd, dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd,
            drawn: drawn ? drawn.startTime : null, server: nav.responseStart - nav.requestStart,
            bytes: bytes};
}"""


def seed(db_path: Path, days: int, per_day: int) -> int:
    rng = random.Random(7)
    now = time.time()
    keys = [f"k{i:011x}" for i in range(8)]
    conn = sqlite3.connect(db_path)
    [(account_id,)] = conn.execute("SELECT id FROM accounts LIMIT 1").fetchall()
    rows = []
    total = days * per_day
    for i in range(total):
        created = now - days * 86_400 + (i + rng.random()) * (days * 86_400 / total)
        prompt, completion = rng.randint(20, 2000), rng.randint(1, 800)
        decode_ms = int(completion / rng.uniform(40, 120) * 1000)
        rows.append(
            (
                account_id,
                rng.choice(keys),
                f"req_{i:x}",
                "openai",
                rng.choice(MODELS),
                prompt,
                completion,
                0,
                0,
                prompt * 480_000 // 1_000_000 + completion * 2,
                "completed",
                created,
                rng.randint(30, 900),
                decode_ms,
            )
        )
    conn.executemany(
        "INSERT INTO usage_records (account_id, key_id, request_id, protocol, model, prompt_tokens, "
        "completion_tokens, cached_tokens, reasoning_tokens, cost_micros, outcome, created_at, ttft_ms, "
        "decode_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.commit()
    conn.close()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--per-day", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kimiserve-bench-dashboard-") as tmp:
        data_dir = Path(tmp)
        key = create_key(data_dir, "default", "bench-admin", "--scopes", "all")
        started = time.monotonic()
        count = seed(data_dir / "kimiserve.db", args.days, args.per_day)
        print(f"seeded {count} usage rows in {time.monotonic() - started:.1f} s")
        server = ServerProcess(data_dir, env={"KIMISERVE_ENGINE": "fake", "KIMISERVE_LOG_LEVEL": "warning"})
        server.start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium", args=["--no-sandbox"]
                )
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"{server.base_url}/dashboard/sign-in")
                page.fill("#key", key)
                with page.expect_navigation():
                    page.click("button[type=submit]")
                print("| range | server (TTFB) ms | response end ms | DOMContentLoaded ms | load ms ", end="")
                print("| plots drawn ms | KB |")
                print("|---|---|---|---|---|---|---|")
                for name in ("30d", "7d", "24h"):
                    page.goto(f"{server.base_url}/dashboard/overview?range={name}")  # warm
                    runs = []
                    for _ in range(args.rounds):
                        page.goto(f"{server.base_url}/dashboard/overview?range={name}")
                        page.wait_for_function("performance.getEntriesByName('plots-drawn').length > 0")
                        runs.append(page.evaluate(TIMING))

                    def cell(field: str, runs: list[dict[str, float]] = runs) -> str:
                        values = [r[field] for r in runs]
                        return f"{statistics.median(values):.0f} (max {max(values):.0f})"

                    kb = statistics.median(r["bytes"] for r in runs) / 1024
                    print(
                        f"| {name} | {cell('server')} | {cell('response')} | {cell('dcl')} | {cell('load')} "
                        f"| {cell('drawn')} | {kb:.0f} |"
                    )
                browser.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
