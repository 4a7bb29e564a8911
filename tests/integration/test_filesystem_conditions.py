"""End to end on a real filesystem: a loop-mounted ext4 image fills up and empties again."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.probes.catalog import PROBE_NAMES
from tests.conftest import AgentProcess, http_get, http_json

pytestmark = pytest.mark.root

RULE = "scratch-disk-full"


def _fill(mnt: Path, mib: int) -> None:
    block = b"\xa5" * (1024 * 1024)
    with (mnt / "ballast").open("wb") as f:
        for _ in range(mib):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())


def _events(agent: AgentProcess) -> list[dict[str, Any]]:
    body = http_json(agent.url + "/v1/events?type=io.nodemedic.condition.*&limit=1000")
    return [e for e in body["events"] if e["subject"] == RULE]


def _wait_for_state(agent: AgentProcess, state: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = _events(agent)
        if events and events[-1]["data"]["state"] == state:
            return events
        time.sleep(0.2)
    pytest.fail(f"no {state} event within {timeout}s; events: {_events(agent)}\n{agent.log()}")


def _scrape(agent: AgentProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, body = http_get(agent.url + "/metrics")
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def test_filling_and_emptying_a_disk_fires_and_resolves(
    scratch_fs: Path, agent_factory: Callable[..., AgentProcess]
) -> None:
    mountpoint = str(scratch_fs)
    settings = {
        "probes": {
            name: {"enabled": name == "filesystem", "interval": "200ms"} for name in PROBE_NAMES
        },
        "rules": [
            {
                "name": RULE,
                "metric": "nodemedic_filesystem_used_ratio",
                "labels": {"mountpoint": mountpoint},
                "op": ">",
                "threshold": 0.5,
                "clear": 0.3,
                "for": "1s",
                "severity": "critical",
                "description": "scratch disk is more than half full",
            }
        ],
    }
    agent = agent_factory(settings)
    agent.start()
    agent.wait_ready()

    conditions = http_json(agent.url + "/v1/conditions")["conditions"]
    mine = [c for c in conditions if c["name"] == RULE]
    assert len(mine) == 1
    assert mine[0]["state"] == "ok"
    assert mine[0]["labels"]["mountpoint"] == mountpoint
    assert mine[0]["labels"]["fstype"] == "ext4"

    _fill(scratch_fs, 12)
    events = _wait_for_state(agent, "firing")
    assert [e["data"]["state"] for e in events] == ["pending", "firing"]
    assert events[1]["data"]["severity"] == "critical"
    assert events[1]["data"]["value"] > 0.5
    assert events[0]["sequence"] < events[1]["sequence"]

    firing = [c for c in http_json(agent.url + "/v1/conditions")["conditions"] if c["name"] == RULE]
    assert firing[0]["state"] == "firing"
    metrics = _scrape(agent)
    fs_labels = frozenset(
        {
            "mountpoint": mountpoint,
            "device": firing[0]["labels"]["device"],
            "fstype": "ext4",
        }.items()
    )
    used = metrics[("nodemedic_filesystem_used_ratio", fs_labels)]
    assert used > 0.5
    assert firing[0]["value"] == pytest.approx(used, abs=0.02)
    state_labels = frozenset({"rule": RULE, "state": "firing"}.items())
    assert metrics[("nodemedic_condition_state", state_labels)] == 1

    # A restart keeps the condition firing without a second firing event.
    assert agent.stop()[0] == 0
    agent.start()
    agent.wait_ready()
    time.sleep(1.0)
    after_restart = _events(agent)
    assert [e["data"]["state"] for e in after_restart] == ["pending", "firing"]
    restored = [
        c for c in http_json(agent.url + "/v1/conditions")["conditions"] if c["name"] == RULE
    ]
    assert restored[0]["state"] == "firing"

    (scratch_fs / "ballast").unlink()
    os.sync()
    events = _wait_for_state(agent, "resolved")
    assert [e["data"]["state"] for e in events] == ["pending", "firing", "resolved"]
    assert events[2]["data"]["previous"] == "firing"
    assert events[2]["data"]["value"] < 0.3
    resolved = [
        c for c in http_json(agent.url + "/v1/conditions")["conditions"] if c["name"] == RULE
    ]
    assert resolved[0]["state"] == "resolved"
    metrics = _scrape(agent)
    assert metrics[("nodemedic_condition_state", state_labels)] == 0
    assert agent.stop()[0] == 0
