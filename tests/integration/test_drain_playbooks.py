"""Drain playbooks through the real engine against a real HAProxy: pairing and rollback.

The engine runs over a real SQLite store (:class:`EngineRig`, an injected clock) with the
shipped actions plus the recording test actions; ``drain.node`` goes to ``drain.haproxy``
by ``remediation.drain.method``, and HAProxy (:mod:`tests.haproxy`) is asked directly
what state ``web/host`` is in.

* a later step that fails runs ``on_failure``, which undrains: the server is READY again;
* ``leave_drained: true`` keeps it drained for a human after the same failure;
* a run abandoned mid-way (the agent killed during a later step) is rolled back by the
  next start's reconciliation when its condition has resolved;
* ``drain.exec`` / ``undrain.exec`` run real scripts with the node's name in their
  environment; a failing one fails the step with its exit code and stderr.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentSettings
from agent.config_drain import DrainConfig, HaproxyDrainConfig
from remediations.actions.base import ActionError
from remediations.actions.drain import DrainExec, DrainExecParams, DrainNode, UndrainExec
from remediations.actions.registry import ACTIONS as REGISTRY
from remediations.model import Mode, RunState
from remediations.service import load_library
from tests import remediation_actions
from tests.actions import RecordingServices, step
from tests.haproxy import (  # the fixture is imported to register it in this module
    HaproxyRig,
    haproxy_rig_fixture,  # noqa: F401
)
from tests.remediation_actions import read_log
from tests.unit.remediations.engine_fixture import EngineRig, playbook

READY = "no check"


def _rig(tmp: Path, haproxy: HaproxyRig, *playbooks: Any) -> EngineRig:
    rig = EngineRig(tmp, list(playbooks), actions={**remediation_actions.ACTIONS, **REGISTRY})
    rig.services.drain = DrainConfig(
        method="haproxy",
        haproxy=HaproxyDrainConfig.model_validate(
            {"socket": haproxy.socket, "servers": ["web/host"], "drain_timeout": "5s"}
        ),
    )
    return rig


def _drain_then(log: Path, fail: Path, **extra: Any) -> Any:
    """A playbook: drain the node, then a step that fails while ``fail`` exists."""
    return playbook(
        "drain-and-fix",
        steps=[
            {"action": "drain.node"},
            {"action": "test.record", "params": {"log": str(log), "fail_if": str(fail)}},
        ],
        **extra,
    )


async def _one_run(rig: EngineRig) -> Mapping[str, Any]:
    """Fire the condition on /a and wait for the run's end; the engine and store close."""
    try:
        rig.fire("/a")
        return await _finished(rig)
    finally:
        await rig.engine.aclose(5.0)
        rig.store.close()


async def _finished(rig: EngineRig) -> Mapping[str, Any]:
    async with asyncio.timeout(60):
        while True:
            ends = [
                d for t, d in rig.events if t.endswith((".failed", ".succeeded", ".interrupted"))
            ]
            if ends:
                return ends[0]
            await asyncio.sleep(0.05)


@pytest.mark.haproxy
@pytest.mark.asyncio
async def test_a_failing_later_step_rolls_the_drain_back(
    tmp_path: Path, haproxy_rig: HaproxyRig
) -> None:
    log, fail = tmp_path / "steps.log", tmp_path / "fail"
    fail.touch()
    rig = _rig(
        tmp_path, haproxy_rig, _drain_then(log, fail, on_failure=[{"action": "undrain.node"}])
    )
    end = await _one_run(rig)
    assert "step 1 failed: /a: told to fail" in str(end["reason"])
    steps = [d for t, d in rig.events if t.endswith(".step")]
    assert [(d["phase"], d["action"], d["ok"]) for d in steps] == [
        ("steps", "drain.node", True),
        ("steps", "test.record", False),
        ("on_failure", "undrain.node", True),
    ]
    assert haproxy_rig.status() == READY
    assert haproxy_rig.admin_state() == 0


@pytest.mark.haproxy
@pytest.mark.asyncio
async def test_leave_drained_keeps_the_node_out_after_a_failure(
    tmp_path: Path, haproxy_rig: HaproxyRig
) -> None:
    log, fail = tmp_path / "steps.log", tmp_path / "fail"
    fail.touch()
    book = _drain_then(log, fail, leave_drained=True, on_failure=[{"action": "event.escalate"}])
    rig = _rig(tmp_path, haproxy_rig, book)
    end = await _one_run(rig)
    assert "step 1 failed" in str(end["reason"])
    assert [t for t, _, _ in rig.services.emitted] == ["io.nodemedic.remediation.escalated"]
    assert haproxy_rig.status() == "DRAIN"
    assert await asyncio.to_thread(haproxy_rig.spread, 4) == {"host": 0, "other": 4}


@pytest.mark.haproxy
def test_an_abandoned_run_is_rolled_back_at_the_next_start(
    tmp_path: Path, haproxy_rig: HaproxyRig
) -> None:
    """The agent dies during the step after the drain; the restarted one undrains."""
    log, block = tmp_path / "steps.log", tmp_path / "release"
    book = playbook(
        "drain-and-fix",
        steps=[
            {"action": "drain.node"},
            {
                "action": "test.record_disruptive",
                "params": {"log": str(log), "wait_for": str(block)},
            },
        ],
        on_failure=[{"action": "undrain.node"}],
    )
    rig = _rig(tmp_path, haproxy_rig, book)
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:

        async def start() -> None:
            rig.fire("/a")
            async with asyncio.timeout(60):
                while not read_log(log):  # noqa: ASYNC110  (the step writes the file)
                    await asyncio.sleep(0.05)

        first.run_until_complete(start())
        assert haproxy_rig.status() == "DRAIN"

        async def crash_and_restart() -> None:
            rig.events.clear()
            rig.resolve("/a")  # the condition cleared while the agent was down
            rig.restart()  # the first loop's tasks never run again, as after SIGKILL
            assert await rig.engine.drain(60.0)

        second.run_until_complete(crash_and_restart())
        interrupted = [d for t, d in rig.events if t.endswith(".interrupted")]
        assert len(interrupted) == 1
        run = rig.engine.journal.describe(str(interrupted[0]["run"]))
    finally:
        block.touch()
        rig.store.close()
        first.close()
        second.close()
    assert haproxy_rig.status() == READY
    assert str(interrupted[0]["reason"]).endswith(
        "which is not idempotent; it is not repeated; its on_failure steps ran"
    )
    assert [d["action"] for t, d in rig.events if t.endswith(".step")] == ["undrain.node"]
    assert run is not None
    assert run["state"] == RunState.INTERRUPTED.value


def _script(path: Path, body: str) -> str:
    path.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    path.chmod(0o755)
    return str(path)


@pytest.mark.asyncio
async def test_drain_exec_runs_the_operator_hooks(tmp_path: Path) -> None:
    out = tmp_path / "lb.log"
    drain = _script(tmp_path / "drain", f'echo "drain $NODEMEDIC_NODE $1" >> {out}')
    undrain = _script(tmp_path / "undrain", f'echo "undrain $NODEMEDIC_NODE" >> {out}')
    services = RecordingServices(
        drain=DrainConfig.model_validate(
            {"method": "exec", "exec": {"drain": [drain, "--now"], "undrain": [undrain]}}
        )
    )
    node = step(DrainNode.Params(), services=services)
    await DrainNode().precheck(node)
    result = await DrainNode().apply(node)
    assert result.summary == f"drain: ran {drain} --now: exit 0"
    assert result.details["method"] == "drain.exec"
    ctx = step(DrainExecParams(), services=services)
    await UndrainExec().apply(ctx)
    assert out.read_text(encoding="utf-8").splitlines() == ["drain node-1 --now", "undrain node-1"]
    dry = await DrainExec().apply(step(DrainExecParams(), services=services, dry_run=True))
    assert dry.summary.startswith(f"would run {drain} --now")
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2


@pytest.mark.asyncio
async def test_a_failing_drain_hook_fails_the_step_with_its_exit_and_stderr(
    tmp_path: Path,
) -> None:
    broken = _script(tmp_path / "drain", 'echo "lb api said 503" >&2; exit 4')
    services = RecordingServices(
        drain=DrainConfig.model_validate(
            {"method": "exec", "exec": {"drain": [broken], "undrain": [broken]}}
        )
    )
    with pytest.raises(ActionError, match=r"exited with 4; stderr: 'lb api said 503'"):
        await DrainExec().apply(step(DrainExecParams(), services=services))
    missing = DrainExecParams(argv=(str(tmp_path / "nope"),))
    with pytest.raises(ActionError, match="is not an executable file"):
        await DrainExec().precheck(step(missing, services=services))
    with pytest.raises(ActionError, match=r"set remediation\.drain\.exec\.drain"):
        await DrainExec().precheck(step(DrainExecParams(), services=RecordingServices()))


@pytest.mark.haproxy
@pytest.mark.asyncio
async def test_the_builtin_drains_on_a_hardware_error_after_approval_and_leaves_it_drained(
    tmp_path: Path, haproxy_rig: HaproxyRig
) -> None:
    _, library = load_library(AgentSettings())
    shipped = library.playbooks["drain-on-hardware-error"]
    assert shipped.mode is Mode.OBSERVE
    enforced = shipped.model_copy(update={"mode": Mode.ENFORCE})
    rig = _rig(tmp_path, haproxy_rig, enforced)
    try:
        rig.fire("cpu", "kernel-hardware-error")
        await rig.settle()
        waiting = rig.engine.journal.in_states((RunState.AWAITING_APPROVAL,))
        assert [r.target for r in waiting] == ["node"]
        assert haproxy_rig.status() == READY  # nothing happens before a human approves
        rig.engine.approve(waiting[0].run_id, by="oncall")
        end = await _finished(rig)
    finally:
        await rig.engine.aclose(5.0)
        rig.store.close()
    assert end["reason"] == "resolved"
    assert haproxy_rig.status() == "DRAIN"
    escalated = [d for t, _, d in rig.services.emitted if t.endswith(".escalated")]
    assert "left out of service until a human" in str(escalated[0]["message"])
