"""What a run's steps are, asked of their rendered params: disruptive, idempotent, renderable.

``exec`` (and the recording ``test.record_as`` here) carry ``disruptive`` and
``idempotent`` as params, so the engine must ask
:func:`remediations.actions.registry.is_disruptive` / ``is_idempotent`` with the step's
params, not read the class. A real SQLite store backs the engine; the clock is injected.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentSettings
from agent.model import Condition, ConditionState, Event, Severity, labelset
from remediations.actions.registry import ACTIONS as REGISTRY
from remediations.model import RunState
from remediations.service import load_library
from tests import remediation_actions
from tests.remediation_actions import read_log
from tests.unit.remediations.engine_fixture import T0, EngineRig, playbook


def _record_as(log: Path, block: Path, **params: Any) -> list[dict[str, Any]]:
    return [
        {
            "action": "test.record_as",
            "params": {"log": str(log), "wait_for": str(block), **params},
        }
    ]


def _skips(rig: EngineRig) -> list[tuple[str, str]]:
    return [
        (str(d["target"]), str(d["gate"]))
        for t, d in rig.events
        if t == "io.nodemedic.remediation.skipped"
    ]


@pytest.mark.asyncio
async def test_a_step_whose_params_say_not_disruptive_runs_beside_a_disruptive_one(
    tmp_path: Path,
) -> None:
    log, block = tmp_path / "steps.log", tmp_path / "release"
    heavy = playbook("heavy", steps=_record_as(log, block))
    light = playbook(
        "light",
        trigger={"conditions": ["filesystem-almost-full"]},
        steps=_record_as(log, block, disruptive=False),
    )
    rig = EngineRig(tmp_path, [heavy, light])
    try:
        rig.fire("/a")
        await rig.settle()
        rig.fire("/b", "filesystem-almost-full")
        await rig.settle()
        rig.fire("/c")
        await rig.settle()
        running = rig.engine.journal.in_states((RunState.RUNNING,))
        assert sorted((r.playbook, r.target, r.disruptive) for r in running) == [
            ("heavy", "/a", True),
            ("light", "/b", False),
        ]
        # The second disruptive run waits its turn: one disruptive run per host.
        assert _skips(rig) == [("/c", "concurrency")]
    finally:
        block.touch()
        assert await rig.engine.drain(10.0)
        rig.store.close()
    assert sorted(line["target"] for line in read_log(log)) == ["/a", "/b"]


def test_after_a_crash_a_step_resumes_only_if_its_params_say_idempotent(tmp_path: Path) -> None:
    log, block = tmp_path / "steps.log", tmp_path / "release"
    once = playbook("once", steps=_record_as(log, block, disruptive=False))
    again = playbook(
        "again",
        trigger={"conditions": ["filesystem-almost-full"]},
        steps=_record_as(log, block, disruptive=False, idempotent=True),
    )
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    rig = EngineRig(tmp_path, [once, again])
    try:

        async def trigger() -> None:
            rig.fire("/a")
            rig.fire("/b", "filesystem-almost-full")
            await rig.settle()

        first.run_until_complete(trigger())
        assert [line["playbook"] for line in read_log(log)] == ["once", "again"]

        async def crash_and_restart() -> None:
            rig.events.clear()
            rig.restart()  # the first loop's tasks never run again, as after SIGKILL
            await rig.settle()
            block.touch()
            assert await rig.engine.drain(10.0)

        second.run_until_complete(crash_and_restart())
    finally:
        rig.store.close()
        first.close()
        second.close()
    # Only the idempotent step ran again, and its run finished.
    assert [line["playbook"] for line in read_log(log)] == ["once", "again", "again"]
    interrupted = [d for t, d in rig.events if t == "io.nodemedic.remediation.interrupted"]
    assert [(d["playbook"], d["target"]) for d in interrupted] == [("once", "/a")]
    assert "not idempotent; it is not repeated" in str(interrupted[0]["reason"])
    assert ("again", "succeeded") in [
        (str(d["playbook"]), t.rsplit(".", 1)[1]) for t, d in rig.events
    ]


@pytest.mark.asyncio
async def test_a_target_the_steps_cannot_take_is_skipped_before_the_gates(
    tmp_path: Path,
) -> None:
    """A check not named after a unit never restarts anything, and says why."""
    settings = AgentSettings()
    _, library = load_library(settings)
    builtin = library.playbooks["restart-unit-failing-check"]  # as shipped: observe
    rig = EngineRig(tmp_path, [builtin], actions={**remediation_actions.ACTIONS, **REGISTRY})
    try:
        for check in ("api-health", "nginx.service"):
            labels = labelset(check=check)
            rig.conditions = [
                Condition(
                    "endpoint-down", labels, ConditionState.FIRING, Severity.CRITICAL, 0.0, T0
                )
            ]
            rig.engine.on_event(
                Event(
                    "x",
                    "nodemedic://node-a",
                    "io.nodemedic.condition.firing",
                    T0,
                    1,
                    "endpoint-down",
                    {"rule": "endpoint-down", "labels": {"check": check}},
                )
            )
            await rig.settle()
        skipped = [d for t, d in rig.events if t == "io.nodemedic.remediation.skipped"]
        assert [(d["target"], d["gate"]) for d in skipped] == [("api-health", "params")]
        assert "invalid unit name 'api-health'" in str(skipped[0]["reason"])
        run = rig.engine.journal.describe(str(skipped[0]["run"]))
        assert run is not None
        assert run["state"] == "skipped"
        # The check named after its unit passed every gate: observe mode records it.
        would = [d for t, d in rig.events if t.endswith(".would_run")]
        assert [d["target"] for d in would] == ["nginx.service"]
        assert would[0]["steps"][0]["params"] == {"unit": "nginx.service"}
    finally:
        await rig.engine.aclose(0.0)
        rig.store.close()
