"""A real ``nodemedic run`` mirroring its conditions onto its Node, against FakeKubeApiServer.

The API server is a fake (no real Kubernetes API can run here; see tests/fake_kube.py)
running in a thread of the test, reached by the agent process over loopback HTTP through
lightkube with a kubeconfig the test writes. A real plugin script, whose exit status the
test sets through a file, makes the agent's conditions fire, change and resolve; an
enforce-mode playbook on one of them drains the node with ``drain.kubernetes`` through
the real remediation engine.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.probes.catalog import PROBE_NAMES
from tests.conftest import REPO, AgentProcess, free_port, http_get, run_cli, until
from tests.fake_kube import FakeKubeApiServer

NODE = "worker-1"
ENV = {"PYTHONPATH": str(REPO), "NODE_NAME": ""}
ONLY_CUSTOM = {name: {"enabled": False} for name in PROBE_NAMES if name != "custom"}
RULES = [
    {
        "name": "raid-degraded",
        "metric": "nodemedic_custom_check_status",
        "labels": {"check": "raid"},
        "op": ">=",
        "threshold": 1,
        "description": "RAID array degraded",
    },
    {
        "name": "raid-failed",
        "metric": "nodemedic_custom_check_status",
        "labels": {"check": "raid"},
        "op": "==",
        "threshold": 2,
        "severity": "critical",
    },
]


@pytest.fixture
def kube() -> Iterator[FakeKubeApiServer]:
    """The fake API server in its own thread, with this node."""
    server = FakeKubeApiServer()
    server.add_node(NODE)
    with server.threaded():
        yield server


def _agent(
    make: Callable[..., AgentProcess], tmp_path: Path, kubeconfig: Path, **extra: Any
) -> tuple[AgentProcess, Path]:
    state = tmp_path / "raid-state"
    state.write_text("0", encoding="utf-8")
    plugin = tmp_path / "check_raid"
    plugin.write_text(f'#!/bin/sh\ns=$(cat {state})\necho "RAID status $s"\nexit $s\n')
    plugin.chmod(0o755)
    books = tmp_path / "playbooks"
    books.mkdir()
    playbook = {
        "name": "raid-rebuild",
        "mode": "enforce",
        "trigger": {"conditions": ["raid-failed"]},
        "target": "md0",
        "steps": [{"action": "drain.kubernetes", "timeout": "1m"}],
        "on_failure": [{"action": "undrain.kubernetes"}],
    }
    (books / "raid.yaml").write_text(json.dumps(playbook), encoding="utf-8")
    settings = {
        "probes": ONLY_CUSTOM
        | {
            "custom": {
                "interval": "200ms",
                "checks": [{"name": "raid", "command": [str(plugin)], "timeout": "5s"}],
            }
        },
        "rules": RULES,
        "remediation": {
            "playbooks_dir": str(books),
            "builtin_playbooks": False,
            "action_modules": ["tests.remediation_actions"],
            "pause_file": str(tmp_path / "pause"),
        },
        "kubernetes": {
            "kubeconfig": str(kubeconfig),
            "node_name": NODE,
            "retry_max": "1s",
            "node_conditions": {"min_interval": "100ms", "heartbeat": "2s"},
        }
        | extra,
    }
    agent = make(settings)
    agent.start(env=ENV)
    return agent, state


def _condition(kube: FakeKubeApiServer, type_: str) -> dict[str, Any] | None:
    return kube.conditions(NODE).get(type_)


def _status_is(kube: FakeKubeApiServer, type_: str, status: str) -> dict[str, Any] | None:
    found = _condition(kube, type_)
    return found if found is not None and found["status"] == status else None


def test_conditions_appear_change_and_clear_on_the_node_and_a_drain_run_becomes_events(
    agent_factory: Callable[..., AgentProcess], kube: FakeKubeApiServer, tmp_path: Path
) -> None:
    # Left by an earlier run: one of a rule that no longer exists, one still firing.
    with kube._lock:
        kube.nodes[NODE]["status"]["conditions"] += [
            {"type": "NodemedicOldRule", "status": "True", "reason": "OldRule"},
            {
                "type": "NodemedicRaidDegraded",
                "status": "True",
                "reason": "RaidDegraded",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            },
        ]
    kube.add_pod("shop", "web-1", node=NODE)
    kube.add_pod("kube-system", "fluentd-x1", node=NODE, owner="DaemonSet")
    agent, state = _agent(agent_factory, tmp_path, kube.write_kubeconfig(tmp_path / "kc"))
    agent.wait_ready()

    # Start: the stale type is deleted, the resolved one set False, Ready left alone.
    cleared = until(
        lambda: _status_is(kube, "NodemedicRaidDegraded", "False"), "the start reconcile", agent
    )
    assert cleared["reason"] == "NoRaidDegraded"
    assert cleared["message"] == "RAID array degraded: not firing"
    assert cleared["lastTransitionTime"] != "2026-01-01T00:00:00Z"
    assert "NodemedicOldRule" not in kube.conditions(NODE)
    assert kube.conditions(NODE)["Ready"]["reason"] == "KubeletReady"
    assert "NodemedicRaidFailed" not in kube.conditions(NODE), "a rule never fired is not shown"

    state.write_text("1", encoding="utf-8")
    degraded = until(lambda: _status_is(kube, "NodemedicRaidDegraded", "True"), "firing", agent)
    assert degraded["reason"] == "RaidDegraded"
    assert degraded["message"] == "RAID array degraded (warning): check=raid value 1 >= 1"
    assert degraded["lastTransitionTime"] >= cleared["lastTransitionTime"]
    assert degraded["lastHeartbeatTime"] >= degraded["lastTransitionTime"]
    assert "NodemedicRaidFailed" not in kube.conditions(NODE)

    state.write_text("2", encoding="utf-8")
    failed = until(lambda: _status_is(kube, "NodemedicRaidFailed", "True"), "the second", agent)
    assert failed["message"] == "raid-failed (critical): check=raid value 2 == 2"
    still = _condition(kube, "NodemedicRaidDegraded")
    assert still is not None
    assert still["status"] == "True"
    assert still["lastTransitionTime"] == degraded["lastTransitionTime"], "no new transition"
    events = until(
        lambda: [e for e in kube.recorded_events() if e["reason"] == "RemediationSucceeded"],
        "the run's Event",
        agent,
    )
    assert events[0]["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Node",
        "name": NODE,
        "uid": NODE,
    }
    assert events[0]["type"] == "Normal"
    assert events[0]["message"].startswith("playbook raid-rebuild on md0 succeeded")
    # The run drained the node through the Eviction API.
    assert kube.node(NODE)["spec"]["unschedulable"] is True
    assert kube.pod_names() == {"kube-system/fluentd-x1"}
    assert kube.evictions == {"shop/web-1": 1}
    assert events[0]["metadata"]["namespace"] == "default"
    reasons = [e["reason"] for e in kube.recorded_events()]
    assert reasons.index("RemediationStarted") < reasons.index("RemediationSucceeded")

    # Nothing changes, yet the heartbeat keeps the conditions fresh (every 2s here).
    beat = until(
        lambda: (
            (c := _condition(kube, "NodemedicRaidFailed")) is not None
            and c["lastHeartbeatTime"] > failed["lastHeartbeatTime"]
            and c
        ),
        "a heartbeat",
        agent,
    )
    assert beat["lastTransitionTime"] == failed["lastTransitionTime"]

    state.write_text("0", encoding="utf-8")
    until(lambda: _status_is(kube, "NodemedicRaidFailed", "False"), "resolution", agent)
    resolved = until(lambda: _status_is(kube, "NodemedicRaidDegraded", "False"), "both", agent)
    assert resolved["reason"] == "NoRaidDegraded"
    assert resolved["lastTransitionTime"] >= degraded["lastTransitionTime"]
    patches = [r for r in kube.requests if r[0] == "PATCH"]
    status = [r for r in patches if r[1].startswith(f"/api/v1/nodes/{NODE}/status?")]
    assert len(patches) - len(status) == 1, "one more: the drain's cordon"
    assert {r[2] for r in patches} == {"application/strategic-merge-patch+json"}
    assert agent.log().count("condition NodemedicRaidFailed is True") == 1


def test_an_unreachable_api_never_blocks_the_agent_and_is_caught_up_once_back(
    agent_factory: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    kube = FakeKubeApiServer()
    kube.add_node(NODE)
    kube.port = free_port()  # nothing listens there yet
    agent, state = _agent(agent_factory, tmp_path, kube.write_kubeconfig(tmp_path / "kc"))
    agent.wait_ready()
    state.write_text("1", encoding="utf-8")

    until(lambda: "cannot update node worker-1" in agent.log(), "the failure logged", agent)
    for _ in range(3):
        status, _ = http_get(agent.url + "/healthz", timeout=2.0)
        assert status == 200
    until(
        lambda: "raid-degraded" in http_get(agent.url + "/v1/conditions")[1],
        "the condition",
        agent,
    )

    with kube.threaded(port=kube.port):
        until(lambda: _status_is(kube, "NodemedicRaidDegraded", "True"), "catching up", agent)
        until(lambda: "node worker-1 is updated again" in agent.log(), "recovery logged", agent)
    assert agent.log().count("cannot update node worker-1") == 1, "logged once, not per retry"


def test_a_node_name_kubernetes_does_not_know_is_logged_with_the_fix(
    agent_factory: Callable[..., AgentProcess], kube: FakeKubeApiServer, tmp_path: Path
) -> None:
    agent, _ = _agent(
        agent_factory, tmp_path, kube.write_kubeconfig(tmp_path / "kc"), node_name="nosuch"
    )
    agent.wait_ready()

    until(lambda: "set kubernetes.node_name or NODE_NAME" in agent.log(), "the hint", agent)
    assert 'get node nosuch: 404 nodes "nosuch" not found' in agent.log()
    assert http_get(agent.url + "/healthz")[0] == 200


def test_bad_kubernetes_settings_are_refused_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "kubernetes:\n"
        "  enabled: sometimes\n"
        "  kubeconfig: relative/kubeconfig\n"
        "  node_name: Worker_1\n"
        "  node_conditions: {prefix: nodemedic, heartbeat: 0s}\n"
        "  drain: {eviction_timeout: soon, force: true}\n",
        encoding="utf-8",
    )

    result = run_cli("validate", "--config", str(config))

    assert result.returncode == 78, result.stdout + result.stderr
    text = result.stdout + result.stderr
    for expected in (
        "kubernetes.enabled",
        "kubernetes.kubeconfig: 'relative/kubeconfig' is not an absolute path",
        "kubernetes.node_name: 'Worker_1' is not a Kubernetes node name",
        "kubernetes.node_conditions.prefix: 'nodemedic' is not a CamelCase prefix",
        "kubernetes.node_conditions.heartbeat: must be longer than zero",
        "kubernetes.drain.eviction_timeout: invalid duration 'soon'",
        "kubernetes.drain.force",
    ):
        assert expected in text, f"{expected!r} not in:\n{text}"
