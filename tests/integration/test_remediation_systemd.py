"""Remediation acceptance against a real systemd 252 booted in nspawn (issue 5).

A real ``nodemedic run`` process watches units in the container through the units probe
(``probes.units.bus`` is the container's system bus, and the systemd actions use the same
bus), fires ``unit-failed`` and runs a playbook from ``remediation.playbooks_dir``:

* enforce: a unit that failed is restarted by the engine, verification sees the condition
  resolve (the unit active), the run succeeds;
* enforce: a unit whose every start fails makes the runs fail, and after ``breaker.failures``
  of them the breaker opens with an escalation event; the next firing is refused by it;
* observe: nothing is touched (the unit's ``InvocationID`` and ``NRestarts`` are unchanged)
  and ``io.nodemedic.remediation.would_run`` names the exact step.

Hold times and cooldowns are short (``for: 1s``, ``cooldown: 0s``) so each test takes
seconds. The rule's ``for`` also orders events: a run that failed has finished before the
condition fires again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.probes.catalog import PROBE_NAMES
from tests.conftest import AgentProcess, http_json, run_cli, until
from tests.nspawn import (  # the fixtures are imported to register them in this module
    NspawnSystemd,
    nspawn_systemd_fixture,  # noqa: F401
)

pytestmark = pytest.mark.systemd

WAIT = 60.0
# Fails on its first start only (the marker survives in the container's /var/tmp), then runs.
FAILS_ONCE = (
    "[Service]\n"
    "ExecStart=/bin/sh -c 'if [ -e /var/tmp/{marker} ]; then exec sleep infinity; "
    "else touch /var/tmp/{marker}; exit 1; fi'\n"
)
# Every start fails, after a second of activating: the start (and restart) job fails.
NEVER_STARTS = "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'sleep 1; exit 3'\n"
FAILS = "[Service]\nExecStart=/bin/sh -c 'sleep 0.2; exit 3'\n"


def _agent(
    make: Callable[..., AgentProcess],
    tmp: Path,
    container: NspawnSystemd,
    unit: str,
    playbook: dict[str, Any],
) -> AgentProcess:
    books = tmp / "playbooks"
    books.mkdir()
    (books / f"{playbook['name']}.yaml").write_text(json.dumps(playbook), encoding="utf-8")
    probes: dict[str, Any] = {name: {"enabled": False} for name in PROBE_NAMES}
    probes["units"] = {"units": [unit], "interval": "60s", "bus": container.bus_address}
    agent = make(
        {
            "probes": probes,
            "rules": [
                {
                    "name": "unit-failed",
                    "metric": "nodemedic_unit_failed",
                    "op": "==",
                    "threshold": 1,
                    "for": "1s",
                    "severity": "critical",
                }
            ],
            "remediation": {
                "playbooks_dir": str(books),
                "builtin_playbooks": False,
                "pause_file": str(tmp / "pause"),
            },
        }
    )
    agent.start()
    agent.wait_ready()
    return agent


def _playbook(name: str, mode: str, **safety: Any) -> dict[str, Any]:
    return {
        "name": name,
        "mode": mode,
        "trigger": {"conditions": ["unit-failed"]},
        "target": "{labels.unit}",
        "preconditions": [{"condition_firing": True}],
        "steps": [{"action": "systemd.restart_unit", "params": {"unit": "{target}"}}],
        "verify": {"condition_resolved_within": "30s"},
        "safety": {"cooldown": "0s", "max_runs": {"count": 10, "per": "1h"}, **safety},
    }


def _events(agent: AgentProcess, kind: str) -> list[dict[str, Any]]:
    url = f"{agent.url}/v1/events?type=io.nodemedic.remediation.{kind}&limit=100"
    events: list[dict[str, Any]] = http_json(url)["events"]
    return [e["data"] for e in events]


def _show(container: NspawnSystemd, unit: str) -> dict[str, str]:
    return container.systemctl_show(unit, "ActiveState", "NRestarts", "InvocationID")


def test_enforce_restarts_a_failed_unit_and_the_run_succeeds(
    tmp_path: Path,
    nspawn_systemd: NspawnSystemd,
    agent_factory: Callable[..., AgentProcess],
) -> None:
    container = nspawn_systemd
    unit = container.unit_name("heals")
    container.install_unit(unit, FAILS_ONCE.format(marker=unit))
    agent = _agent(agent_factory, tmp_path, container, unit, _playbook("heal", "enforce"))
    try:
        container.run("systemctl", "start", "--no-block", unit)
        done = until(lambda: _events(agent, "succeeded"), "a succeeded run", agent, WAIT)
        run = http_json(f"{agent.url}/v1/runs/{done[0]['run']}")
        after = _show(container, unit)
        why = run_cli("why", done[0]["run"], "--config", str(agent.config_path))
    finally:
        container.remove_unit(unit)
    assert run["target"] == unit
    assert run["state"] == "succeeded"
    assert after["ActiveState"] == "active"
    # systemd itself restarted nothing (no Restart=): the engine did.
    assert after["NRestarts"] == "0"
    steps = _events(agent, "step")
    assert [(s["action"], s["ok"]) for s in steps] == [("systemd.restart_unit", True)]
    assert steps[0]["details"]["before"]["active_state"] == "failed"
    assert steps[0]["details"]["after"]["active_state"] == "active"
    assert _events(agent, "failed") == []
    assert why.returncode == 0, why.stderr
    assert "state succeeded" in why.stdout
    agent.stop()


def test_a_unit_that_keeps_crashing_trips_the_breaker_and_escalates(
    tmp_path: Path,
    nspawn_systemd: NspawnSystemd,
    agent_factory: Callable[..., AgentProcess],
) -> None:
    container = nspawn_systemd
    unit = container.unit_name("crashes")
    container.install_unit(unit, NEVER_STARTS)
    book = _playbook("heal", "enforce", breaker={"failures": 2, "reset_after": "1h"})
    agent = _agent(agent_factory, tmp_path, container, unit, book)
    try:
        container.run("systemctl", "start", "--no-block", unit)
        escalated = until(lambda: _events(agent, "escalated"), "an escalation", agent, WAIT)
        refused = until(
            lambda: [s for s in _events(agent, "skipped") if s["gate"] == "breaker"],
            "a run refused by the open breaker",
            agent,
            WAIT,
        )
        status = http_json(f"{agent.url}/v1/remediation")
    finally:
        container.remove_unit(unit)
    failed = _events(agent, "failed")
    assert len(failed) == 2, failed
    assert all(f["target"] == unit and "step 0 failed" in f["reason"] for f in failed)
    assert len(escalated) == 1
    assert "circuit breaker of heal" in escalated[0]["reason"]
    assert refused[0]["target"] == unit
    # Only the two runs acted: the breaker held every later firing.
    assert [s["action"] for s in _events(agent, "step")] == ["systemd.restart_unit"] * 2
    assert status["playbooks"]["heal"]["breaker"] == "open"
    agent.stop()


def test_observe_mode_touches_nothing_and_says_what_would_run(
    tmp_path: Path,
    nspawn_systemd: NspawnSystemd,
    agent_factory: Callable[..., AgentProcess],
) -> None:
    container = nspawn_systemd
    unit = container.unit_name("observed")
    container.install_unit(unit, FAILS)
    agent = _agent(agent_factory, tmp_path, container, unit, _playbook("heal", "observe"))
    try:
        container.run("systemctl", "start", "--no-block", unit)
        until(
            lambda: _show(container, unit)["ActiveState"] == "failed",
            "the unit failed",
            agent,
            WAIT,
        )
        before = _show(container, unit)
        would = until(lambda: _events(agent, "would_run"), "a would_run event", agent, WAIT)
        runs = http_json(f"{agent.url}/v1/runs")["runs"]
        after = _show(container, unit)
    finally:
        container.remove_unit(unit)
    assert after == before
    assert after["ActiveState"] == "failed"
    assert would[0]["target"] == unit
    assert would[0]["steps"] == [
        {
            "action": "systemd.restart_unit",
            "params": {"unit": unit},
            "timeout": 30.0,
            "retries": 0,
        }
    ]
    assert f"would run systemd.restart_unit {{'unit': '{unit}'}}" in would[0]["reason"]
    assert [(r["state"], r["would_run"]) for r in runs] == [("skipped", True)]
    assert _events(agent, "step") == []
    agent.stop()
