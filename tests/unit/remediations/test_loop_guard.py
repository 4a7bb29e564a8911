"""The loop guard: a condition that keeps coming back after successful runs trips the
breaker, and runs an operator asks for are never counted as the condition's return.

A real SQLite store and the recording test actions back the engine; the clock is set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from remediations.breaker import BreakerState
from remediations.model import RunState
from tests.unit.remediations.engine_fixture import EngineRig, playbook

SAFETY = {
    "cooldown": "0s",
    "max_runs": {"count": 100, "per": "1h"},
    "loop_guard": {"returns": 2, "within": "30m"},
}


@pytest.fixture
def rig(tmp_path: Path) -> EngineRig:
    return EngineRig(tmp_path, [playbook(safety=SAFETY)])


def _states(rig: EngineRig) -> list[str]:
    return [r["state"] for r in reversed(rig.engine.journal.recent(limit=10))]


def _decision(rig: EngineRig, run_id: str, gate: str) -> dict[str, Any]:
    record = rig.engine.journal.describe(run_id)
    assert record is not None
    return next(d for d in record["decisions"] if d["gate"] == gate)


@pytest.mark.asyncio
async def test_a_condition_back_after_every_success_trips_the_breaker(rig: EngineRig) -> None:
    try:
        for _ in range(3):
            rig.fire("/data")
            await rig.settle()
            rig.resolve("/data")
            rig.now += 60
        assert _states(rig) == ["succeeded", "succeeded", "skipped"]
        [last] = rig.engine.journal.recent(limit=1)
        assert "came back within 1800s of a success 2 times" in last["reason"]
        assert rig.engine.breaker(rig.playbooks[0]).state is BreakerState.OPEN
        assert "escalated" in rig.kinds()
    finally:
        assert await rig.engine.drain(10.0)
        rig.store.close()


@pytest.mark.asyncio
async def test_runs_an_operator_asks_for_are_not_the_condition_coming_back(
    rig: EngineRig,
) -> None:
    try:
        runs = []
        for _ in range(4):
            runs.append(rig.engine.request("fix-disk", "/data", source="remote: alice (ops)"))
            await rig.settle()
            rig.now += 60
        assert _states(rig) == ["succeeded"] * 4
        decision = _decision(rig, runs[-1].run_id, "loop_guard")
        assert decision["allowed"]
        assert decision["reason"] == "0 returns after success; an operator's run is not one"
        assert rig.engine.breaker(rig.playbooks[0]).state is BreakerState.CLOSED

        # The condition itself still counts: back after the last success is one return.
        rig.fire("/data")
        await rig.settle()
        [last] = rig.engine.journal.recent(limit=1)
        assert last["state"] == RunState.SUCCEEDED
        assert _decision(rig, last["id"], "loop_guard")["reason"] == "1 returns after success"
    finally:
        assert await rig.engine.drain(10.0)
        rig.store.close()
