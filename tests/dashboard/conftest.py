"""Browser fixtures: Playwright for Python driving Debian's chromium (`.ci/run` installs it;
Playwright's own browser download is never used), and a screenshot of any failed test's page
under the test's tmp_path."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import ServerProcess, create_key

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Module-scoped: Playwright's sync API keeps an event loop running while it is open, which
    the async tests of later modules cannot share."""
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A fresh browser context (no cookies) at desktop width; screenshot saved if the test fails."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors
    yield page
    report = getattr(request.node, "report_call", None)
    if report is None or report.failed:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
    context.close()


@pytest.fixture(scope="session")
def admin_key(server_dir: Path) -> str:
    return create_key(server_dir, "default", "dashboard-admin", "--scopes", "all")


@pytest.fixture(scope="session")
def dashboard(server: ServerProcess, admin_key: str) -> str:
    return f"{server.base_url}/dashboard"


def sign_in(page: Any, dashboard: str, key: str) -> None:
    page.goto(f"{dashboard}/sign-in")
    page.fill("#key", key)
    with page.expect_navigation():
        page.click("button[type=submit]")
