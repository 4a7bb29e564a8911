"""NodeCondition naming and content, and the mirror's coalescing and Event rate limit.

The mirror runs against :class:`tests.fake_kube.FakeKubeApiServer` (a fake: no real
Kubernetes API can run here) through the real lightkube client and a real EventBus.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agent.bus import EventBus
from agent.config import RuleConfig
from agent.config_kubernetes import KubernetesConfig
from agent.kube_status import NodeStatusMirror, condition_type, desired_conditions
from agent.model import Condition, ConditionState, Event, Severity, labelset
from tests.fake_kube import FakeKubeApiServer

NODE = "worker-1"
FULL = RuleConfig.model_validate(
    {
        "name": "filesystem-almost-full",
        "metric": "nodemedic_filesystem_used_ratio",
        "op": ">",
        "threshold": 0.9,
        "description": "Filesystem almost full",
    }
)
ROOT_FULL = FULL.model_copy(update={"name": "root_fs.full", "description": ""})


def _condition(rule: str, state: ConditionState, since: float, **labels: str) -> Condition:
    return Condition(
        rule=rule,
        labels=labelset(labels),
        state=state,
        severity=Severity.WARNING,
        value=0.95,
        since=since,
    )


def test_types_are_the_prefix_and_the_rule_in_camel_case_or_the_mapping() -> None:
    config = KubernetesConfig()
    assert condition_type("filesystem-almost-full", config) == "NodemedicFilesystemAlmostFull"
    assert condition_type("root_fs.full", config) == "NodemedicRootFsFull"
    mapped = KubernetesConfig.model_validate(
        {"node_conditions": {"prefix": "Acme", "types": {"root_fs.full": "DiskFull"}}}
    )
    assert condition_type("root_fs.full", mapped) == "AcmeDiskFull"
    assert condition_type("unit-failed", mapped) == "AcmeUnitFailed"


def test_a_rule_is_true_while_any_series_fires_and_false_once_none_does() -> None:
    config = KubernetesConfig()
    conditions = [
        _condition(FULL.name, ConditionState.FIRING, 200.0, mountpoint="/var"),
        _condition(FULL.name, ConditionState.FIRING, 100.0, mountpoint="/"),
        _condition(FULL.name, ConditionState.OK, 50.0, mountpoint="/home"),
        _condition(ROOT_FULL.name, ConditionState.RESOLVED, 300.0),
    ]

    wanted = desired_conditions(conditions, [FULL, ROOT_FULL], config, now=400.0)

    full = wanted["NodemedicFilesystemAlmostFull"]
    assert full.status == "True"
    assert full.reason == "FilesystemAlmostFull"
    assert full.message == (
        "Filesystem almost full (warning): mountpoint=/var value 0.95 > 0.9; "
        "mountpoint=/ value 0.95 > 0.9"
    )
    assert full.since == 100.0, "it became true when the first series fired"
    resolved = wanted["NodemedicRootFsFull"]
    assert (resolved.status, resolved.reason) == ("False", "NoRootFsFull")
    assert resolved.message == "root_fs.full: not firing"
    assert resolved.since == 300.0


@pytest_asyncio.fixture
async def kube() -> AsyncIterator[FakeKubeApiServer]:
    """The fake API server with this node."""
    server = FakeKubeApiServer()
    await server.start()
    server.add_node(NODE)
    try:
        yield server
    finally:
        await server.stop()


def _event(sequence: int, type_: str, **data: Any) -> Event:
    return Event(
        id=f"01J{sequence:023d}",
        source=f"nodemedic://{NODE}",
        type=type_,
        time=time.time(),
        sequence=sequence,
        subject=data.get("playbook"),
        data=data,
    )


async def _until(check: Any, what: str) -> None:
    try:
        async with asyncio.timeout(20.0):
            while not check():  # noqa: ASYNC110 - polling another server's state
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"{what} did not happen within 20s")


@pytest.mark.asyncio
async def test_many_changes_are_coalesced_and_events_beyond_the_rate_are_dropped(
    kube: FakeKubeApiServer, tmp_path: Path
) -> None:
    config = KubernetesConfig.model_validate(
        {
            "kubeconfig": str(kube.write_kubeconfig(tmp_path / "kc")),
            "node_conditions": {"min_interval": "500ms", "heartbeat": "1h"},
            "events": {"burst": 3, "per_minute": 0.01},
        }
    )
    current: list[Condition] = []
    mirror = NodeStatusMirror(config, node=NODE, rules=[FULL], conditions=lambda: list(current))
    bus = EventBus()
    task = asyncio.create_task(mirror.run(bus.subscribe("kubernetes", maxsize=256)), name="m")
    try:
        for sequence in range(1, 201):  # a flapping condition: 200 transitions at once
            state = ConditionState.FIRING if sequence % 2 else ConditionState.RESOLVED
            current[:] = [_condition(FULL.name, state, time.time())]
            bus.publish(_event(sequence, f"io.nodemedic.condition.{state.value}"))
        current[:] = [_condition(FULL.name, ConditionState.FIRING, time.time())]
        bus.publish(_event(201, "io.nodemedic.condition.firing"))
        for sequence in range(300, 310):
            bus.publish(
                _event(
                    sequence,
                    "io.nodemedic.remediation.failed",
                    playbook="pb",
                    target="md0",
                    reason="step 1 failed",
                )
            )

        await _until(
            lambda: (
                kube.conditions(NODE).get("NodemedicFilesystemAlmostFull", {}).get("status")
                == "True"
            ),
            "the condition on the node",
        )
        await _until(lambda: mirror.dropped_events == 7, "the drops")
    finally:
        bus.close()
        await asyncio.wait_for(task, timeout=10)

    patches = [r for r in kube.requests if r[0] == "PATCH"]
    assert 1 <= len(patches) <= 3, f"{len(patches)} status updates for 201 changes"
    events = kube.recorded_events()
    assert len(events) == 3
    assert {e["reason"] for e in events} == {"RemediationFailed"}
    assert events[0]["type"] == "Warning"
    assert events[0]["message"] == "playbook pb on md0 failed: step 1 failed"
