"""How ``nodemedic fleet`` reads the broker's retained messages: offline nodes first, then
nodes with firing conditions, then healthy ones; a payload that cannot be read is shown
on its node with what was wrong."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC
from typing import Any

from agent.fleet_view import fleet_json, fleet_nodes, render_fleet
from agent.terminal import console
from tests.unit.test_status_view import ANSI, NOW, iso

PREFIX = "nodemedic/v1"


def status(node: str, **body: Any) -> tuple[str, bytes]:
    """A retained status message of ``node``."""
    return f"{PREFIX}/nodes/{node}/status", json.dumps(body).encode()


def conditions(node: str, *items: tuple[str, str, str], at: float = NOW - 30) -> tuple[str, bytes]:
    """A retained conditions snapshot: (name, state, severity) per condition."""
    body = {
        "node": node,
        "firing": sum(1 for _, state, _ in items if state == "firing"),
        "time": iso(at),
        "conditions": [
            {"name": n, "state": s, "severity": sev, "labels": {}, "value": 1.0, "since": iso(at)}
            for n, s, sev in items
        ],
    }
    return f"{PREFIX}/nodes/{node}/conditions", json.dumps(body).encode()


def online(node: str, since: float = NOW - 3600) -> tuple[str, bytes]:
    return status(node, state="online", session="s-" + node, version="0.4.0", since=iso(since))


MESSAGES = [
    online("zeta"),
    conditions("zeta"),
    online("alpha"),
    conditions("alpha", ("load-high", "firing", "warning"), ("mem", "pending", "warning")),
    online("gamma"),
    conditions(
        "gamma",
        ("disk-full", "firing", "critical"),
        ("disk-full", "firing", "critical"),
        ("load-high", "firing", "warning"),
    ),
    status(
        "lost",
        state="offline",
        session="s-lost",
        reason="connection lost",
        session_started=iso(NOW - 7200),
    ),
    conditions("lost", at=NOW - 600),
    status("stopped", state="offline", session="s-stopped", reason="stopped", since=iso(NOW - 60)),
    (f"{PREFIX}/nodes/garbage/status", b"\xff{not json"),
    online("badcond"),
    (f"{PREFIX}/nodes/badcond/conditions", b'{"conditions": [{"name": "x"}]}'),
    conditions("nostatus", ("x", "firing", "info")),
    ("other/v1/nodes/elsewhere/status", b'{"state": "online"}'),
    (f"{PREFIX}/nodes/zeta/events/io.nodemedic.agent.started", b"{}"),
]


def test_offline_first_then_firing_by_severity_then_healthy() -> None:
    nodes = fleet_nodes(MESSAGES, PREFIX)
    assert [n.name for n in nodes] == [
        "garbage",
        "lost",
        "nostatus",
        "stopped",
        "gamma",
        "alpha",
        "badcond",
        "zeta",
    ]
    assert [n.group for n in nodes] == [0, 0, 0, 0, 1, 1, 1, 2]


def test_what_each_node_says() -> None:
    nodes = {n.name: n for n in fleet_nodes(MESSAGES, PREFIX)}
    lost = nodes["lost"]
    assert (lost.status, lost.reason, lost.since) == ("offline", "connection lost", None)
    assert lost.last_seen == NOW - 600  # its last snapshot is newer than its session start
    stopped = nodes["stopped"]
    assert (stopped.status, stopped.reason, stopped.since) == ("offline", "stopped", NOW - 60)
    assert nodes["garbage"].status == "unknown"
    assert nodes["garbage"].problems[0].startswith("status: not JSON (")
    assert nodes["badcond"].problems == ("conditions: conditions[0] has no 'state' string",)
    assert nodes["alpha"].pending == 1
    assert [c["name"] for c in nodes["gamma"].firing] == ["disk-full", "disk-full", "load-high"]


def test_a_later_message_on_a_topic_replaces_the_retained_one() -> None:
    nodes = fleet_nodes([*MESSAGES, online("lost", since=NOW - 5)], PREFIX)
    lost = next(n for n in nodes if n.name == "lost")
    assert (lost.status, lost.since, lost.group) == ("online", NOW - 5, 2)


def test_malformed_payloads_of_every_kind_are_named() -> None:
    cases = {
        b"[1, 2]": "status: a JSON list, not an object",
        b'{"state": "sleeping"}': "status: 'state' is 'sleeping', expected online or offline",
        b'{"session": "x"}': "status: no 'state'",
        b'{"state": NaN}': "status: not JSON (NaN is not valid JSON)",
    }
    for payload, problem in cases.items():
        (node,) = fleet_nodes([(f"{PREFIX}/nodes/n/status", payload)], PREFIX)
        assert node.problems[0].startswith(problem), (payload, node.problems)
        assert node.group == 0
    (node,) = fleet_nodes(
        [online("n"), (f"{PREFIX}/nodes/n/conditions", b'{"conditions": {}}')], PREFIX
    )
    assert node.problems == ("conditions: 'conditions' is not a list",)


def test_the_table_reads_like_kubectl_get_nodes_and_has_no_colour_when_piped() -> None:
    out = io.StringIO()
    render_fleet(
        fleet_nodes(MESSAGES, PREFIX), console(out), prefix=PREFIX, now=NOW, complete=True, tz=UTC
    )
    text = out.getvalue()
    assert not ANSI.search(text)
    lines = text.splitlines()
    assert lines[0] == (
        "FLEET nodemedic/v1 at 2026-11-29 22:10:03 UTC: 8 nodes, 4 offline or unknown, "
        "3 with firing conditions or unreadable, 1 healthy"
    )
    assert re.split(r"\s{2,}", lines[1]) == ["NODE", "STATUS", "SINCE", "CONDITIONS", "VERSION"]
    rows = {line.split()[0]: line for line in lines[2:10]}
    assert lines[10:13] == ["", "UNREADABLE RETAINED MESSAGES", lines[12]]
    assert lines[12].startswith("  garbage: status: not JSON (")
    assert lines[12].endswith("): b'\\xff{not json'")
    assert lines[13:] == ["  badcond: conditions: conditions[0] has no 'state' string"]
    assert list(rows) == [
        "garbage",
        "lost",
        "nostatus",
        "stopped",
        "gamma",
        "alpha",
        "badcond",
        "zeta",
    ]
    assert "UNKNOWN (unreadable status, see below)" in rows["garbage"]
    assert "OFFLINE (connection lost)" in rows["lost"]
    assert "after 22:00:03 UTC (last seen 10m00s ago)" in rows["lost"]
    assert "OFFLINE (stopped)" in rows["stopped"]
    assert "22:09:03 UTC (1m00s ago)" in rows["stopped"]
    assert "UNKNOWN (no status message)" in rows["nostatus"]
    assert "3 FIRING: critical disk-full x2, warning load-high" in rows["gamma"]
    assert "1 FIRING: warning load-high; 1 pending" in rows["alpha"]
    assert "UNREADABLE (see below)" in rows["badcond"]
    assert re.search(
        r"^zeta\s+online\s+21:10:03 UTC \(1h00m ago\)\s+none firing\s+0\.4\.0$", rows["zeta"]
    )


def test_an_incomplete_or_empty_collection_says_so() -> None:
    out = io.StringIO()
    render_fleet([], console(out), prefix=PREFIX, now=NOW, complete=False, tz=UTC)
    text = out.getvalue()
    assert "INCOMPLETE: retained messages were still arriving at the time limit" in text
    assert "no node has a retained status or conditions message under nodemedic/v1/nodes/ " in text


def test_the_json_document_has_stable_keys_in_the_table_order() -> None:
    nodes = fleet_nodes(MESSAGES, PREFIX)
    document = fleet_json(nodes, prefix=PREFIX, read_at=NOW, complete=True)
    assert list(document) == ["prefix", "read_at", "complete", "nodes"]
    assert document["read_at"] == "2026-11-29T22:10:03.000Z"
    assert [n["node"] for n in document["nodes"]] == [n.name for n in nodes]
    lost = document["nodes"][1]
    assert lost == {
        "node": "lost",
        "status": "offline",
        "reason": "connection lost",
        "since": None,
        "last_seen": iso(NOW - 600),
        "version": None,
        "session": "s-lost",
        "firing": [],
        "pending": 0,
        "problems": [],
    }
    json.dumps(document, allow_nan=False)
