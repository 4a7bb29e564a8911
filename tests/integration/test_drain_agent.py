"""Drain playbooks inside a real ``nodemedic run`` process, against a real HAProxy.

The agent is configured with ``remediation.drain`` (method haproxy, the rig's admin socket,
server ``web/host``); a rule that always breaches triggers a playbook from
``remediation.playbooks_dir`` that drains the node, then runs a recording step
(:mod:`tests.remediation_actions`) that fails or blocks. HAProxy is asked directly what
state ``web/host`` is in.

* the later step fails: ``on_failure`` undrains, the server is READY again;
* the agent is killed (SIGKILL) during the later step: the restarted agent reconciles the
  run, which runs its ``on_failure`` undrain and ends interrupted.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.probes.catalog import PROBE_NAMES
from tests.conftest import REPO, AgentProcess, http_json, until
from tests.haproxy import (  # the fixture is imported to register it in this module
    HaproxyRig,
    haproxy_rig_fixture,  # noqa: F401
)
from tests.remediation_actions import read_log

pytestmark = pytest.mark.haproxy

ENV = {"PYTHONPATH": str(REPO)}
READY = "no check"


def _agent(
    make: Callable[..., AgentProcess], tmp: Path, rig: HaproxyRig, second_step: dict[str, Any]
) -> AgentProcess:
    books = tmp / "playbooks"
    books.mkdir()
    playbook = {
        "name": "drain-and-fix",
        "mode": "enforce",
        "trigger": {"conditions": ["always"]},
        "target": "node",
        "steps": [{"action": "drain.node", "timeout": "30s"}, second_step],
        "on_failure": [{"action": "undrain.node"}],
    }
    (books / "drain.yaml").write_text(json.dumps(playbook), encoding="utf-8")
    probes: dict[str, Any] = {name: {"enabled": False} for name in PROBE_NAMES}
    probes["load"] = {"interval": "200ms"}
    return make(
        {
            "probes": probes,
            "rules": [{"name": "always", "metric": "nodemedic_load1", "op": ">=", "threshold": -1}],
            "remediation": {
                "playbooks_dir": str(books),
                "builtin_playbooks": False,
                "action_modules": ["tests.remediation_actions"],
                "pause_file": str(tmp / "pause"),
                "drain": {
                    "method": "haproxy",
                    "haproxy": {"socket": rig.socket, "servers": ["web/host"]},
                },
            },
        }
    )


def _events(agent: AgentProcess, kind: str) -> list[dict[str, Any]]:
    url = f"{agent.url}/v1/events?type=io.nodemedic.remediation.{kind}&limit=100"
    events: list[dict[str, Any]] = http_json(url)["events"]
    return [e["data"] for e in events]


def test_a_failing_later_step_undrains_the_node(
    tmp_path: Path, haproxy_rig: HaproxyRig, agent_factory: Callable[..., AgentProcess]
) -> None:
    log, fail = tmp_path / "steps.log", tmp_path / "fail"
    fail.touch()
    step = {"action": "test.record", "params": {"log": str(log), "fail_if": str(fail)}}
    agent = _agent(agent_factory, tmp_path, haproxy_rig, step)
    agent.start(env=ENV)
    agent.wait_ready()
    failed = until(lambda: _events(agent, "failed"), "a failed run", agent, 60.0)
    assert "step 1 failed: node: told to fail" in failed[0]["reason"]
    steps = [(d["phase"], d["action"], d["ok"]) for d in _events(agent, "step")]
    assert sorted(steps) == sorted(
        [
            ("steps", "drain.node", True),
            ("steps", "test.record", False),
            ("on_failure", "undrain.node", True),
        ]
    )
    assert haproxy_rig.status() == READY
    assert haproxy_rig.admin_state() == 0


def test_a_run_killed_after_the_drain_is_undrained_by_the_next_start(
    tmp_path: Path, haproxy_rig: HaproxyRig, agent_factory: Callable[..., AgentProcess]
) -> None:
    log = tmp_path / "steps.log"
    step = {
        "action": "test.record_disruptive",
        "params": {"log": str(log), "wait_for": str(tmp_path / "never")},
        "timeout": "1h",
    }
    agent = _agent(agent_factory, tmp_path, haproxy_rig, step)
    agent.start(env=ENV)
    agent.wait_ready()
    until(lambda: read_log(log), "the step after the drain", agent, 60.0)
    assert haproxy_rig.status() == "DRAIN"
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(timeout=10)

    agent.start(env=ENV)
    agent.wait_ready()
    interrupted = until(lambda: _events(agent, "interrupted"), "an interrupted run", agent, 60.0)
    assert interrupted[0]["reason"].endswith("; its on_failure steps ran")
    assert haproxy_rig.status() == READY
    assert len(read_log(log)) == 1  # the disruptive step was not repeated
