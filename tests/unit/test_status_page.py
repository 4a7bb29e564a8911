"""The status page as a browser receives it from a real server over a loopback port.

The agent is :class:`~tests.unit.fake_view.FakeAgentView`; the remediation engine is
``FakeRemediationView`` below (an in-memory journal of one run), since a real engine needs
the whole runtime, which the integration and Chromium tests drive.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.metrics_core import Metric

from agent.api import ApiServer
from agent.history import MetricHistory
from agent.model import Condition, ConditionState, Event, Severity, labelset
from agent.status_page import PageData, render_page
from agent.status_summary import format_duration, iso_utc, node_summary

from .fake_view import NODE, T0, FakeAgentView

HOSTILE = '<script>alert("x")</script>'
CLOSE_SCRIPT = "</script><img src=x onerror=alert(1)>"

RUN = {
    "id": "01J0000000000000000000000A",
    "playbook": "restart-<b>nginx</b>",
    "target": "nginx.service",
    "source": "condition",
    "mode": "observe",
    "disruptive": True,
    "state": "skipped",
    "step": None,
    "would_run": True,
    "gate": "cooldown",
    "reason": "cooldown: last run 2 min ago",
    "trigger": {},
    "requested": "2023-11-14T22:13:20.000Z",
    "started": None,
    "finished": None,
    "decisions": [
        {
            "time": "2023-11-14T22:13:20.000Z",
            "phase": "queue",
            "gate": "pause",
            "allowed": True,
            "reason": "not paused",
        },
        {
            "time": "2023-11-14T22:13:20.001Z",
            "phase": "queue",
            "gate": "cooldown",
            "allowed": False,
            "reason": f"cooldown {HOSTILE}",
        },
    ],
    "steps": [],
}


@dataclass(eq=False)  # hashable by identity: a Prometheus registry keys collectors
class FakeRemediationView:
    """An engine with a journal of given runs and a pause switch."""

    journal: list[dict[str, Any]] = field(default_factory=lambda: [RUN])
    paused: bool = False

    def runs(self, *, limit: int, playbook: str | None = None) -> list[dict[str, Any]]:
        """Run summaries (the decisions left out, as the journal's summaries do)."""
        return [{k: v for k, v in r.items() if k != "decisions"} for r in self.journal][:limit]

    def run(self, run_id: str) -> dict[str, Any] | None:
        """The whole record."""
        return next((r for r in self.journal if r["id"] == run_id), None)

    def pause_state(self) -> dict[str, Any]:
        """As set."""
        return {"paused": self.paused, "reason": "by token ops" if self.paused else None}

    def status(self) -> dict[str, Any]:
        """The pause state only."""
        return self.pause_state()

    def collect(self) -> Iterator[Metric]:
        """No families."""
        return iter(())


def hostile_view() -> FakeAgentView:
    """Conditions and events whose labels, subjects and data try to inject markup."""
    return FakeAgentView(
        tracked=[
            Condition(
                "disk-full",
                labelset(mountpoint=HOSTILE),
                ConditionState.FIRING,
                Severity.CRITICAL,
                0.97,
                T0,
                description=HOSTILE,
            ),
            Condition("cpu-hot", (), ConditionState.OK, Severity.WARNING, None, T0 + 60),
        ],
        stored_events=[
            Event(
                id="01HZ1",
                source="nodemedic://node-a",
                type="io.nodemedic.condition.firing",
                time=T0,
                sequence=1,
                subject=HOSTILE,
                data={"note": CLOSE_SCRIPT},
            )
        ],
    )


@dataclass(frozen=True)
class Page:
    """A fetched page."""

    status: int
    headers: dict[str, str]
    html: str


@pytest_asyncio.fixture
async def fetch() -> AsyncIterator[Any]:
    """Serve a view on a loopback port and GET its status page."""
    servers: list[ApiServer] = []

    async def get(view: FakeAgentView, remediation: FakeRemediationView | None = None) -> Page:
        server = ApiServer(view, remediation=remediation)
        servers.append(server)
        await server.start("127.0.0.1", 0)
        async with aiohttp.ClientSession() as session, session.get(server.url + "/") as resp:
            return Page(resp.status, dict(resp.headers), await resp.text())

    yield get
    for server in servers:
        await server.stop()


@pytest.mark.asyncio
async def test_hostile_labels_subjects_and_data_are_shown_as_text_never_as_markup(
    fetch: Any,
) -> None:
    page = await fetch(hostile_view(), FakeRemediationView())

    assert page.status == 200
    assert HOSTILE not in page.html
    assert "<img" not in page.html
    assert "<b>nginx" not in page.html
    assert "mountpoint=&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page.html
    assert "restart-&lt;b&gt;nginx&lt;/b&gt;" in page.html
    assert "cooldown &lt;script&gt;" in page.html
    # Exactly two script elements (the boot data and the page's own script), each closed once.
    assert page.html.count("<script") == 2
    assert page.html.lower().count("</script") == 2


@pytest.mark.asyncio
async def test_the_page_says_times_are_utc_and_writes_them_in_iso_8601(fetch: Any) -> None:
    page = await fetch(hostile_view())

    assert "All times are UTC" in page.html
    assert '<time datetime="2023-11-14T22:13:20Z">2023-11-14T22:13:20Z</time>' in page.html
    assert "Since (UTC)" in page.html
    assert iso_utc(T0) == "2023-11-14T22:13:20Z"


@pytest.mark.asyncio
async def test_health_and_states_are_written_out_beside_their_colour(fetch: Any) -> None:
    page = await fetch(hostile_view(), FakeRemediationView())

    assert "Critical: 1 firing, 0 pending" in page.html
    assert re.search(r'<tr class="state-firing">.*?</span> firing</td>', page.html)
    assert re.search(r'<tr class="state-ok">.*?</span> ok</td>', page.html)
    assert "\u2716 stop" in page.html
    assert "\u2714 pass" in page.html
    assert "Decision record: which gate said what" in page.html
    assert f'id="node">{NODE}</span>' in page.html
    assert 'aria-live="polite"' in page.html
    assert '<label for="token">API token</label>' in page.html


@pytest.mark.asyncio
async def test_no_remediation_means_no_pause_buttons(fetch: Any) -> None:
    page = await fetch(FakeAgentView())

    assert "Remediation is off on this node" in page.html
    assert 'id="pause"' not in page.html
    assert "No conditions are tracked yet." in page.html


@pytest.mark.asyncio
async def test_the_page_is_never_cached_and_runs_only_its_own_inline_script(fetch: Any) -> None:
    page = await fetch(hostile_view())

    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    policy = page.headers["Content-Security-Policy"]
    assert policy.startswith("default-src 'self';")
    assert "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    scripts = re.findall(r"<script>(.*?)</script>", page.html, re.DOTALL)
    styles = re.findall(r"<style>(.*?)</style>", page.html, re.DOTALL)
    assert len(scripts) == 1
    assert len(styles) == 1
    assert f"script-src {_hash(scripts[0])};" in policy
    assert f"style-src {_hash(styles[0])};" in policy


@pytest.mark.asyncio
async def test_a_query_is_refused_with_a_json_error_naming_it() -> None:
    server = ApiServer(FakeAgentView())
    await server.start("127.0.0.1", 0)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(server.url + "/?refresh=1") as response,
        ):
            assert response.status == 400
            assert await response.json() == {
                "error": "unknown query parameter",
                "detail": "/ takes no query parameters",
            }
    finally:
        await server.stop()


@pytest.mark.asyncio
async def test_a_broken_view_costs_a_json_500_not_a_crash(fetch: Any) -> None:
    page = await fetch(FakeAgentView(broken={"conditions"}))

    assert page.status == 500
    assert "the agent failed to answer GET /" in page.html


def test_the_charts_draw_the_last_hour_scaled_to_percent() -> None:
    history = MetricHistory()
    now = T0 + 3600
    history.record(T0 - 10, {"cpu": 99.0})  # older than an hour: not drawn
    history.record(T0, {"cpu": 0.0})
    history.record(now, {"cpu": 50.0, "load": 2.0})
    view = FakeAgentView()
    summary = node_summary(view, None, version="1.2.3", started=T0, now=now)

    html = render_page(PageData(summary=summary, history=history, now=now))

    assert 'id="line-cpu" fill="none" points="0.0,80.0 300.0,40.0"' in html
    assert 'id="line-load" fill="none" points="300.0,7.3"' in html
    assert '<span id="latest-cpu">50%</span>' in html
    assert '<span id="latest-memory">no readings in the last hour</span>' in html
    assert "1 h 0 min (since" in html


def test_durations_read_naturally() -> None:
    assert [format_duration(s) for s in (5, 65, 3 * 3600 + 300, 2 * 86400 + 4 * 3600)] == [
        "5 s",
        "1 min 5 s",
        "3 h 5 min",
        "2 d 4 h",
    ]


def _hash(text: str) -> str:
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()
    return f"'sha256-{digest}'"
