"""How ``nodemedic status`` shows a node: words for every state, zones on every time, no
colour when piped, and a stable ``--json`` document."""

from __future__ import annotations

import io
import json
import re
import time
from datetime import UTC
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.node_status import NodeStatus
from agent.status_view import render_status
from agent.terminal import console, format_age, format_time, parse_time

NOW = 1_795_990_203.0  # 2026-11-29 22:10:03 UTC
ANSI = re.compile(r"\x1b\[")


def iso(epoch: float) -> str:
    """RFC 3339 UTC, as the agent writes times."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + ".000Z"


def condition(name: str, state: str, severity: str, since: float, **labels: str) -> dict[str, Any]:
    """A condition as /v1/conditions shows it."""
    return {
        "name": name,
        "state": state,
        "severity": severity,
        "labels": labels,
        "value": 0.971,
        "since": iso(since),
        "description": "",
    }


def node_status(**changes: Any) -> NodeStatus:
    """A busy node: one firing and one pending condition, a paused engine, two runs."""
    fields: dict[str, Any] = {
        "api": "http://127.0.0.1:9464",
        "read_at": NOW,
        "node": "web-1",
        "version": "0.4.0",
        "started": NOW - 2 * 3600 - 13 * 60,
        "ready": True,
        "ready_reason": None,
        "mqtt": {
            "state": "disconnected",
            "broker": "mqtt://broker:1883",
            "reason": "cannot reach mqtt://broker:1883: [Errno 111] Connection refused",
            "session": None,
            "outbox": {
                "depth": 12,
                "bytes": 4096,
                "oldest_age_seconds": 30.0,
                "shed": 0,
                "used_ratio": 0.0,
            },
        },
        "conditions": (
            condition("root-disk-full", "firing", "critical", NOW - 540, mountpoint="/"),
            condition("load-high", "pending", "warning", NOW - 60),
        ),
        "remediation": {"paused": True, "reason": "maintenance [by ops]", "in_flight": 0},
        "runs": (
            {
                "id": "01M8MPS9G5TE4V0XTZHDJT619F",
                "playbook": "disk-cleanup",
                "target": "/",
                "state": "succeeded",
                "gate": None,
                "reason": None,
                "would_run": False,
                "requested": iso(NOW - 3 * 86400),
            },
            {
                "id": "01M8MPS9G5TE4V0XTZHDJT619G",
                "playbook": "restart-unit",
                "target": "nginx.service",
                "state": "skipped",
                "gate": "cooldown",
                "reason": "ran 2m ago; cooldown 10m",
                "would_run": False,
                "requested": iso(NOW - 120),
            },
        ),
        "events": (
            {
                "type": "io.nodemedic.condition.firing",
                "time": iso(NOW - 540),
                "sequence": 7,
                "subject": "root-disk-full",
                "data": {"rule": "root-disk-full", "value": 0.971},
            },
        ),
    }
    fields.update(changes)
    return NodeStatus(**fields)


class _Tty(io.StringIO):
    """A StringIO that says it is a terminal, as rich's colour detection asks."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def no_colour_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither NO_COLOR nor FORCE_COLOR from the caller's environment."""
    for name in ("NO_COLOR", "FORCE_COLOR", "TERM", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")


def piped(status: NodeStatus) -> str:
    out = io.StringIO()
    render_status(status, console(out), tz=UTC)
    return out.getvalue()


def test_piped_output_has_no_colour_no_trailing_blanks_and_says_every_state_in_words(
    no_colour_env: None,
) -> None:
    text = piped(node_status())
    assert not ANSI.search(text)
    assert all(line == line.rstrip() for line in text.splitlines())
    lines = text.splitlines()
    assert "NODE         web-1" in lines
    assert "nodemedic 0.4.0, up 2h13m (since 2026-11-29 19:57:03 UTC)" in text
    assert "READY        ready" in lines
    assert (
        "DISCONNECTED: mqtt://broker:1883: cannot reach mqtt://broker:1883: [Errno 111] "
        "Connection refused (outbox 12 events, oldest 30s)" in text
    )
    assert "PAUSED: maintenance [by ops] (0 in flight)" in text  # brackets are not markup
    assert "CONDITIONS: 1 firing, 1 pending" in lines
    firing = next(line for line in lines if "root-disk-full" in line and "FIRING" in line)
    assert re.search(
        r"^FIRING\s+critical\s+root-disk-full\s+mountpoint=/\s+0\.971\s+"
        r"22:01:03 UTC \(9m00s ago\)$",
        firing,
    )
    pending = next(line for line in lines if "load-high" in line)
    assert re.search(
        r"^pending\s+warning\s+load-high\s+-\s+0\.971\s+22:09:03 UTC \(1m00s ago\)$", pending
    )
    assert lines.index(firing) < lines.index(pending)


def test_runs_show_their_outcome_and_why_with_the_date_when_not_today(no_colour_env: None) -> None:
    lines = piped(node_status()).splitlines()
    succeeded = next(line for line in lines if "disk-cleanup" in line)
    assert "succeeded" in succeeded
    assert "2026-11-26 22:10:03 UTC (3d00h ago)" in succeeded
    skipped = next(line for line in lines if "restart-unit" in line)
    assert "skipped" in skipped
    assert "cooldown: ran 2m ago; cooldown 10m" in skipped
    event = next(line for line in lines if "condition.firing" in line)
    assert re.search(r"^22:01:03 UTC\s+7\s+condition\.firing\s+root-disk-full\s+\{", event)


def test_a_node_with_nothing_to_report_says_so(no_colour_env: None) -> None:
    text = piped(
        node_status(
            ready=False,
            ready_reason="waiting for the first run of probes: cpu",
            mqtt=None,
            conditions=(),
            remediation=None,
            runs=(),
            events=(),
            version=None,
            started=None,
        )
    )
    assert "READY        NOT READY: waiting for the first run of probes: cpu" in text
    assert "BROKER       not configured (events kept in the local history)" in text
    assert "REMEDIATION  not enabled on this agent" in text
    assert "AGENT        nodemedic (version unknown)" in text
    assert "CONDITIONS: 0 firing, 0 pending" in text
    assert "  none: every condition is ok" in text
    assert "RECENT RUNS" not in text
    assert "RECENT EVENTS: none" in text


def test_on_a_terminal_colour_repeats_the_words_and_no_color_turns_it_off(
    no_colour_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    tty = _Tty()
    render_status(node_status(), console(tty, width=200), tz=UTC)
    coloured = tty.getvalue()
    assert "\x1b[1;31mFIRING" in coloured  # bold red, and the word itself
    assert "\x1b[33mpending" in coloured
    monkeypatch.setenv("NO_COLOR", "1")
    tty = _Tty()
    render_status(node_status(), console(tty, width=200), tz=UTC)
    plain = tty.getvalue()
    assert not re.search(r"\x1b\[[0-9;]*3[0-7]m", plain)  # no foreground colour at all
    assert "FIRING" in plain


def test_times_carry_the_zone_of_the_reader() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    assert format_time(NOW, berlin) == "2026-11-29 23:10:03 CET"
    assert format_time(NOW, berlin, today=NOW + 60) == "23:10:03 CET"
    assert format_time(NOW, ZoneInfo("Asia/Kolkata")) == "2026-11-30 03:40:03 IST"
    assert format_time(NOW, UTC) == "2026-11-29 22:10:03 UTC"
    text = io.StringIO()
    render_status(node_status(), console(text), tz=berlin)
    assert "23:01:03 CET (9m00s ago)" in text.getvalue()


def test_the_local_zone_comes_from_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert format_time(NOW) == "2026-11-29 17:10:03 EST"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_ages_and_times_parse_and_print() -> None:
    assert [format_age(s) for s in (0, 45, 192, 7500, 273600, -5)] == [
        "0s",
        "45s",
        "3m12s",
        "2h05m",
        "3d04h",
        "0s",
    ]
    assert parse_time("2026-11-29T22:10:03.000Z") == NOW
    assert parse_time("2026-11-29T23:10:03+01:00") == NOW
    assert parse_time("2026-11-29T22:10:03") is None  # no zone: ambiguous
    assert parse_time("yesterday") is None
    assert parse_time(1795990203) is None


def test_the_json_document_has_stable_keys() -> None:
    document = node_status().to_json()
    assert list(document) == [
        "api",
        "read_at",
        "node",
        "version",
        "started",
        "uptime_seconds",
        "ready",
        "ready_reason",
        "mqtt",
        "firing",
        "pending",
        "conditions",
        "remediation",
        "events",
    ]
    assert document["read_at"] == "2026-11-29T22:10:03.000Z"
    assert document["uptime_seconds"] == 2 * 3600 + 13 * 60
    assert (document["firing"], document["pending"]) == (1, 1)
    assert [c["name"] for c in document["conditions"]] == ["root-disk-full", "load-high"]
    assert list(document["remediation"]) == ["paused", "reason", "in_flight", "runs"]
    assert [r["playbook"] for r in document["remediation"]["runs"]] == [
        "disk-cleanup",
        "restart-unit",
    ]
    json.dumps(document, allow_nan=False)
    bare = node_status(remediation=None, started=None, mqtt=None).to_json()
    assert (bare["remediation"], bare["started"], bare["uptime_seconds"], bare["mqtt"]) == (
        None,
        None,
        None,
        None,
    )
