"""The status page in a real headless Chromium (the Debian package) against a real agent.

Playwright drives ``/usr/bin/chromium`` over its DevTools protocol; Playwright's own
browser builds are never installed. The browser gets a fresh profile under the test's
tmp dir and flags that keep it off the network. Screenshots are written under
``test-artifacts/`` (git-ignored) and their paths printed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from tests.conftest import REPO, http_json
from tests.status_agent import NODE, OPS, VIEWER, StatusAgent, status_agent

pytestmark = pytest.mark.chromium

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts"
WAIT_MS = 30_000  # generous: the machine is shared


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[StatusAgent]:
    """A ready agent, killed at the end."""
    started = status_agent(tmp_path)
    yield started
    started.kill()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    """Chromium with a fresh profile; closed at the end."""
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1100, "height": 900},
        )
        context.set_default_timeout(WAIT_MS)
        try:
            yield context
        finally:
            context.close()


def test_the_page_shows_the_node_updates_live_and_pauses_with_a_valid_token_only(
    agent: StatusAgent, browser: BrowserContext
) -> None:
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    page.on(
        "console",
        lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None,
    )

    page.goto(agent.url + "/")
    expect(page.locator("h1")).to_contain_text(NODE)
    expect(page.locator("#health-text")).to_have_text("Healthy: 0 firing, 0 pending")
    expect(page.locator("#id-stream")).to_have_text("\u2714 connected", timeout=WAIT_MS)
    page.evaluate("window.notReloaded = true")

    # A condition fires on the agent: the page shows it without a reload.
    agent.switch(on=True)
    firing = page.locator("#cond-body tr.state-firing")
    expect(firing).to_contain_text("switch-critical", timeout=WAIT_MS)
    expect(firing).to_contain_text("firing")  # the state in words, not only in red
    expect(firing).to_contain_text("check=switch")
    expect(page.locator("#health-text")).to_have_text("Critical: 1 firing, 0 pending")
    expect(page.locator("#live")).to_contain_text("switch-critical")
    expect(page.locator("#events-body")).to_contain_text("condition.firing")
    # The condition triggered the observe-mode playbook: its run and decision record appear.
    run = page.locator("#runs details.run").first
    expect(run).to_contain_text("switch-observe", timeout=WAIT_MS)
    run.locator("summary").click()
    expect(run.locator("caption")).to_have_text("Decision record: which gate said what")
    expect(run.locator("tbody tr").first).to_be_visible()
    assert page.evaluate("window.notReloaded") is True
    _screenshot(page, "status-page-firing.png")

    # Refused: no token, a wrong token, a token without the pause permission.
    result = page.locator("#pause-result")
    page.click("#pause")
    expect(result).to_contain_text("Refused (HTTP 401): unauthorized")
    page.fill("#token", "not-a-token")
    page.click("#pause")
    expect(result).to_contain_text("not one of remote.api_tokens")
    page.fill("#token", VIEWER)
    page.click("#pause")
    expect(result).to_contain_text("Refused (HTTP 403)")
    assert _remediation(agent)["paused"] is False
    expect(page.locator("#id-remediation")).to_have_text("Active (not paused)")

    # Accepted with the operator's token: the page and the API agree.
    page.fill("#token", OPS)
    page.click("#pause")
    expect(result).to_contain_text("\u2714")
    expect(page.locator("#id-remediation")).to_contain_text("Paused")
    assert _remediation(agent)["paused"] is True
    page.click("#resume")
    expect(page.locator("#id-remediation")).to_have_text("Active (not paused)")
    assert _remediation(agent)["paused"] is False
    # Not kept unless asked: nothing in sessionStorage.
    assert page.evaluate("window.sessionStorage.length") == 0

    # The charts grow without a reload too (a point every 10 s).
    points = page.locator("#line-memory")
    drawn = (points.get_attribute("points") or "").count(",")
    until_page(lambda: (points.get_attribute("points") or "").count(",") > drawn, page)
    expect(page.locator("#latest-memory")).to_contain_text("%")

    # The condition resolves: still live.
    agent.switch(on=False)
    expect(page.locator("#health-text")).to_have_text(
        "Healthy: 0 firing, 0 pending", timeout=WAIT_MS
    )
    expect(page.locator("#cond-body tr.state-resolved")).to_contain_text("switch-critical")
    assert page.evaluate("window.notReloaded") is True
    assert problems == []


def test_a_narrow_window_has_no_horizontal_overflow(
    agent: StatusAgent, browser: BrowserContext
) -> None:
    agent.switch(on=True)
    page = browser.new_page()
    page.set_viewport_size({"width": 360, "height": 740})
    page.goto(agent.url + "/")
    expect(page.locator("#cond-body tr.state-firing")).to_contain_text(
        "switch-critical", timeout=WAIT_MS
    )

    widths: dict[str, Any] = page.evaluate(
        "({scroll: document.documentElement.scrollWidth,"
        " client: document.documentElement.clientWidth})"
    )

    assert widths["client"] == 360
    assert widths["scroll"] <= widths["client"], json.dumps(widths)
    # Every table cell says what it is once the header row is hidden.
    assert page.locator("#cond-body td[data-label=Severity]").first.is_visible()
    _screenshot(page, "status-page-360px.png")


def until_page(check: Callable[[], bool], page: Page) -> None:
    """Poll ``check`` (not in the page: its policy forbids evaluating strings) until true."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while not check():
        assert time.monotonic() < deadline, "the page did not change in time"
        page.wait_for_timeout(100)


def _remediation(agent: StatusAgent) -> dict[str, Any]:
    body: dict[str, Any] = http_json(agent.url + "/v1/remediation")
    return body


def _screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")  # noqa: T201  (where to find the artifact)
