"""The dashboard in a real browser (Debian's chromium through Playwright) against a real server
process on the real embedded model."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.dashboard.conftest import sign_in
from tests.serverproc import ServerProcess, create_key

HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


def chat(server: ServerProcess, key: str, n: int = 4) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "kimi-k2.6", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": n},
        timeout=60,
    )


def run_task(server: ServerProcess, key: str, content: str) -> str:
    """A sync Runware textInference task of 4 tokens; its taskUUID."""
    task_uuid = str(uuid.uuid4())
    task = {
        "taskType": "textInference",
        "taskUUID": task_uuid,
        "model": "moonshotai:kimi@2.6",
        "messages": [{"role": "user", "content": content}],
        "settings": {"maxTokens": 4},
    }
    reply = httpx.post(
        f"{server.base_url}/v1", headers={"Authorization": f"Bearer {key}"}, json=[task], timeout=60
    )
    assert reply.status_code == 200, reply.text
    return task_uuid


def test_sign_in_sets_a_strict_httponly_session_and_sign_out_ends_it(
    page: Any, dashboard: str, admin_key: str
) -> None:
    page.goto(f"{dashboard}/overview")
    assert page.url.endswith("/dashboard/sign-in")  # not signed in: sent to sign in

    page.fill("#key", "ks-nope-nope")
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert "That key is not valid." in page.text_content("main")

    sign_in(page, dashboard, admin_key)
    assert page.url.endswith("/dashboard/overview")
    assert page.is_visible("nav >> text=Accounts")
    [cookie] = [c for c in page.context.cookies() if c["name"] == "kimiserve_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/dashboard"
    assert admin_key not in cookie["value"]
    assert page.evaluate("document.cookie") == ""  # nothing readable from script

    with page.expect_navigation():
        page.click("text=Sign out")
    assert page.url.endswith("/dashboard/sign-in")
    page.goto(f"{dashboard}/keys")
    assert page.url.endswith("/dashboard/sign-in")
    assert page.js_errors == []


def test_a_new_key_is_shown_once_and_revoking_it_refuses_the_next_request(
    page: Any, dashboard: str, admin_key: str, server: ServerProcess
) -> None:
    sign_in(page, dashboard, admin_key)
    page.goto(f"{dashboard}/keys")
    page.fill("#key-name", "from-the-browser")
    with page.expect_navigation():
        page.click("#create-key")
    key = page.input_value("#new-key")
    assert key.startswith("ks-")
    key_id = key.split("-")[1]
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.click("#copy-key")
    page.wait_for_function("document.getElementById('copy-status').textContent !== ''")
    assert page.text_content("#copy-status") == "Copied."
    assert page.evaluate("navigator.clipboard.readText()") == key

    page.goto(f"{dashboard}/keys")  # shown once: never again
    assert key not in page.content()
    row = page.locator(f"tr[data-key-id='{key_id}']")
    assert row.locator(".state").text_content() == "active"
    assert "inference" in row.text_content() and "admin" not in row.text_content()

    assert chat(server, key).status_code == 200
    with page.expect_navigation():
        row.get_by_role("button", name=f"Revoke key {key_id}").click()
    assert f"Key {key_id} revoked." in page.text_content("main")
    assert page.locator(f"tr[data-key-id='{key_id}'] .state").text_content() == "revoked"
    refused = chat(server, key)
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "Invalid API key."


def test_the_playground_streams_tokens_before_the_end_and_the_usage_plot_moves(
    page: Any, dashboard: str, admin_key: str
) -> None:
    sign_in(page, dashboard, admin_key)
    page.goto(f"{dashboard}/overview?range=1h")
    before_total = int(page.text_content("#total-requests") or "0")
    before_plot = page.evaluate("window.kimiCharts[0].data.slice(1).flat().reduce((a, b) => a + b, 0)")

    page.goto(f"{dashboard}/playground")
    page.fill("#pg-messages .content", "Write a short poem about the sea.")
    page.fill("#pg-max", "48")
    page.fill("#pg-seed", "7")
    # Record every change of the answer while it is still streaming.
    page.evaluate(
        """() => {
        window.__seen = [];
        const answer = document.getElementById('pg-answer');
        new MutationObserver(() => window.__seen.push([answer.dataset.state, answer.textContent.length]))
            .observe(answer, {childList: true, characterData: true, subtree: true, attributes: true});
    }"""
    )
    page.click("#pg-send")
    page.wait_for_selector("#pg-answer[data-state=done]", timeout=90_000)
    seen = page.evaluate("window.__seen")
    streaming = [n for state, n in seen if state == "streaming" and n > 0]
    assert len(set(streaming)) >= 2, seen  # text grew in several steps before the end
    assert page.is_hidden("#pg-error")
    answer = page.text_content("#pg-answer") or ""
    assert answer.strip() and max(streaming) <= len(answer)
    usage = page.text_content("#pg-usage") or ""
    assert "completion" in usage and "cost $0.0" in usage

    page.goto(f"{dashboard}/overview?range=1h")
    assert int(page.text_content("#total-requests") or "0") == before_total + 1
    after_plot = page.evaluate("window.kimiCharts[0].data.slice(1).flat().reduce((a, b) => a + b, 0)")
    assert after_plot == before_plot + 1
    ttft = page.evaluate("window.kimiCharts[5].data[1].filter(v => v !== null)")
    assert ttft and all(v > 0 for v in ttft)  # time to first token was recorded and plotted
    # The mean plots draw their points (a bucket between empty ones has no line to draw).
    for index in (5, 6):
        shown = page.evaluate(f"window.kimiCharts[{index}].series[1].points.show")
        points = page.evaluate(f"window.kimiCharts[{index}].data[1].filter(v => v !== null).length")
        assert shown is True and points >= 1, (index, shown, points)
    # Sub-cent costs: the cost axes' tick labels are distinct and not all zero.
    for index in (2, 4):
        # uPlot draws the axes on its canvas; the labels it drew are kept on the axis.
        ticks = page.evaluate(f"window.kimiCharts[{index}].axes[1]._values.filter(t => t)")
        assert len(ticks) >= 2 and len(set(ticks)) == len(ticks), ticks
        assert any(float(t.lstrip("$").replace(",", "")) > 0 for t in ticks), ticks
    assert page.js_errors == []


def test_a_key_without_admin_scope_sees_only_its_own_account(
    page: Any, dashboard: str, admin_key: str, server: ServerProcess, server_dir: Path
) -> None:
    # A task of the admin's account, which the other account must not see.
    task_uuid = run_task(server, admin_key, "Hi")
    user_key = create_key(server_dir, "someone-else", "plain-user")
    sign_in(page, dashboard, user_key)
    assert page.url.endswith("/dashboard/overview")
    nav = page.text_content("header nav") or ""
    assert "Playground" in nav and "Tasks" in nav
    assert "Accounts" not in nav and "Keys" not in nav and "Engines" not in nav
    for path in ("accounts", "keys", "engines"):
        response = page.goto(f"{dashboard}/{path}")
        assert response.status == 403
        assert "needs a key with the admin scope" in page.text_content("main")
    response = page.goto(f"{dashboard}/tasks/{task_uuid}")
    assert response.status == 404
    page.goto(f"{dashboard}/tasks")
    assert task_uuid not in page.content()
    # The admin sees it.
    page.context.clear_cookies()
    sign_in(page, dashboard, admin_key)
    response = page.goto(f"{dashboard}/tasks/{task_uuid}")
    assert response.status == 200 and task_uuid in page.text_content("h1")


def test_markup_in_prompts_and_names_is_shown_as_text(
    page: Any, dashboard: str, admin_key: str, server: ServerProcess
) -> None:
    task_uuid = run_task(server, admin_key, HOSTILE)
    sign_in(page, dashboard, admin_key)
    page.goto(f"{dashboard}/tasks/{task_uuid}")
    request_json = page.text_content("pre.json") or ""
    assert json.loads(request_json)["messages"][0]["content"] == HOSTILE  # the markup, as text
    assert page.locator("main img").count() == 0

    page.goto(f"{dashboard}/keys")
    page.fill("#key-name", HOSTILE)
    with page.expect_navigation():
        page.click("#create-key")
    assert page.get_by_role("heading", name="created").text_content().count("<script>") == 1

    page.goto(f"{dashboard}/playground")
    page.fill("#pg-system", HOSTILE)
    page.click("#pg-code-toggle")
    assert HOSTILE.replace('"', '\\"') in (page.text_content("#pg-code-text") or "")
    page.get_by_role("tab", name="openai SDK").click()
    assert "<img src=x" in (page.text_content("#pg-code-text") or "")
    assert page.locator("main img").count() == 0
    assert page.evaluate("window.__pwned === undefined")
    assert page.js_errors == []


def test_a_post_without_the_csrf_token_is_refused(
    page: Any, dashboard: str, admin_key: str, server: ServerProcess
) -> None:
    sign_in(page, dashboard, admin_key)
    page.goto(f"{dashboard}/keys")
    keys_before = page.locator("#keys tbody tr").count()
    account = page.input_value("#key-account")
    form = {"action": "create", "account": account, "name": "forged", "scopes": "admin"}
    api = page.context.request  # the signed-in browser's cookies
    for token in (None, "wrong"):
        fields = dict(form) if token is None else {**form, "csrf_token": token}
        response = api.post(f"{dashboard}/keys", form=fields)
        assert response.status == 403
        assert "CSRF token is missing or wrong" in response.text()
    response = api.post(
        f"{dashboard}/accounts", form={"action": "top-up", "account": account, "amount_usd": "5"}
    )
    assert response.status == 403
    chat_body = {"model": "kimi-k2.6", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    response = api.post(f"{dashboard}/api/chat", data=chat_body)
    assert response.status == 403 and response.json()["error"]["code"] == "csrf_failed"
    response = api.post(f"{dashboard}/api/tasks", data=[{"taskType": "textInference"}])
    assert response.status == 403 and response.json()["errors"][0]["code"] == "csrfFailed"
    # Signing in is protected too (no session yet: a double-submit token).
    response = api.post(f"{dashboard}/sign-in", form={"key": admin_key})
    assert response.status == 403
    page.goto(f"{dashboard}/keys")
    assert page.locator("#keys tbody tr").count() == keys_before
    assert "forged" not in page.text_content("#keys")


def test_pages_fit_a_phone_and_the_playground_is_reachable_by_keyboard(
    page: Any, dashboard: str, admin_key: str
) -> None:
    sign_in(page, dashboard, admin_key)
    page.set_viewport_size({"width": 390, "height": 844})
    for path in ("overview", "accounts", "keys", "tasks", "engines", "playground"):
        page.goto(f"{dashboard}/{path}")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, (path, overflow)  # wide tables scroll inside their own box
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    for _ in range(60):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "pg-send":
            break
    else:
        raise AssertionError("the Send button is not reachable with Tab")
    page.keyboard.press("Enter")
    page.wait_for_selector("#pg-answer[data-state=done]", timeout=90_000)
    assert (page.text_content("#pg-answer") or "").strip()
    assert page.js_errors == []


def test_an_admin_tops_up_and_limits_an_account(page: Any, dashboard: str, admin_key: str) -> None:
    sign_in(page, dashboard, admin_key)
    page.goto(f"{dashboard}/accounts")
    page.fill("#new-account", "topped-up")
    with page.expect_navigation():
        page.get_by_role("button", name="Create").click()
    row = page.locator("tr", has_text="topped-up")
    assert "unmetered" in row.text_content()
    row.get_by_label("Dollars to add to topped-up").fill("abc")
    with page.expect_navigation() as nav:
        row.get_by_role("button", name="Add").click()
    assert nav.value.status == 400
    assert "amount_usd must be a number of dollars." in page.text_content("[role=alert]")
    row = page.locator("tr", has_text="topped-up")
    row.get_by_label("Dollars to add to topped-up").fill("5.25")
    with page.expect_navigation():
        row.get_by_role("button", name="Add").click()
    row = page.locator("tr", has_text="topped-up")
    assert "$5.250000" in row.text_content()
    row.get_by_label("Requests per minute").fill("7")
    with page.expect_navigation():
        row.get_by_role("button", name="Save").click()
    row = page.locator("tr", has_text="topped-up")
    assert "7 / — / —" in row.text_content()
    assert page.input_value("tr:has-text('topped-up') input[name=rpm]") == "7"


def test_the_playground_runs_a_runware_task_that_the_tasks_page_then_lists(
    page: Any, dashboard: str, admin_key: str
) -> None:
    sign_in(page, dashboard, admin_key)
    page.goto(f"{dashboard}/playground")
    page.select_option("#pg-protocol", "runware")
    page.fill("#pg-system", "You answer briefly.")
    page.fill("#pg-messages .content", "Name a colour.")
    page.fill("#pg-max", "16")
    page.click("#pg-send")
    page.wait_for_selector("#pg-answer[data-state=done]", timeout=90_000)
    assert page.is_hidden("#pg-error"), page.text_content("#pg-error")
    assert (page.text_content("#pg-answer") or "").strip()
    usage = page.text_content("#pg-usage") or ""
    assert "completion" in usage and "cost $0.0" in usage  # the server's own cost, includeCost

    page.goto(f"{dashboard}/tasks")
    first = page.locator("tbody tr").first
    assert "stream" in first.text_content() and "success" in first.text_content()
    with page.expect_navigation():
        first.locator("a").click()
    request = json.loads(page.text_content("pre.json") or "{}")
    assert request["settings"]["systemPrompt"] == "You answer briefly."
    assert request["deliveryMethod"] == "stream"
    assert page.js_errors == []


def _error_totals(page: Any, dashboard: str) -> dict[str, float]:
    """The stored errors-by-code plot's totals per protocol (its series are `protocol code`)."""
    page.goto(f"{dashboard}/overview?range=1h")
    data = json.loads(page.text_content("#overview-data") or "{}")
    [plot] = [p for p in data["plots"] if p["title"] == "Errors by code"]
    totals: dict[str, float] = {}
    for label, column in zip(plot["labels"], plot["data"][1:], strict=True):
        protocol = label.split(" ")[0]
        totals[protocol] = totals.get(protocol, 0) + sum(column)
    return totals


def test_refused_requests_appear_in_the_stored_errors_plot(
    page: Any, dashboard: str, admin_key: str, server: ServerProcess
) -> None:
    sign_in(page, dashboard, admin_key)
    before = _error_totals(page, dashboard)
    for _ in range(3):  # a temperature out of range: 400 in OpenAI's format
        bad = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {admin_key}"},
            json={"model": "kimi-k2.6", "messages": [{"role": "user", "content": "Hi"}], "temperature": 7},
            timeout=30,
        )
        assert bad.status_code == 400
    task = {"taskType": "textInference", "taskUUID": str(uuid.uuid4()), "model": "kimi-k2.6", "messages": []}
    assert (
        httpx.post(
            f"{server.base_url}/v1", json=[task], headers={"Authorization": f"Bearer {admin_key}"}
        ).status_code
        == 400
    )
    deadline = time.monotonic() + 30  # the counts are added to the database every few seconds
    while True:
        after = _error_totals(page, dashboard)
        if (
            after.get("openai", 0) >= before.get("openai", 0) + 3
            and after.get("runware", 0) >= before.get("runware", 0) + 1
        ):
            break
        assert time.monotonic() < deadline, (before, after)
        time.sleep(1)
    assert page.is_visible("text=Errors by code")
    assert page.js_errors == []
