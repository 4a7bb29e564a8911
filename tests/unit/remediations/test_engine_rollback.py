"""Abandoned runs: a run the agent stopped or crashed during runs its ``on_failure`` steps.

When a step was attempted and every ``on_failure`` step is idempotent (an undrain, an
escalation), the run is rolled back before it ends as interrupted; otherwise it ends as
before, without them. A real SQLite store backs the engine; the steps are the recording
test actions, whose log file shows what ran.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from remediations.model import RunState
from tests.remediation_actions import read_log
from tests.unit.remediations.engine_fixture import EngineRig, playbook


def _blocking(log: Path, block: Path, undo: str) -> Any:
    return playbook(
        "fix",
        steps=[
            {"action": "test.record", "params": {"log": str(log), "note": "prepare"}},
            {
                "action": "test.record_disruptive",
                "params": {"log": str(log), "note": "act", "wait_for": str(block)},
            },
        ],
        on_failure=[{"action": undo, "params": {"log": str(log), "note": "undo"}}],
    )


async def _until_logged(log: Path, note: str) -> None:
    async with asyncio.timeout(30):
        while note not in [line["note"] for line in read_log(log)]:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_a_run_stopped_mid_way_is_rolled_back_at_the_next_start(tmp_path: Path) -> None:
    log, block = tmp_path / "steps.log", tmp_path / "release"
    rig = EngineRig(tmp_path, [_blocking(log, block, "test.record")])
    try:
        rig.fire("/a")
        await _until_logged(log, "act")
        await rig.engine.aclose(0.0)  # the agent stops; the run is cancelled in step 1
        (run,) = rig.engine.journal.in_states((RunState.RUNNING,))
        assert "interrupted" not in rig.kinds()  # left for the next start to settle

        rig.resolve("/a")
        rig.restart()
        assert await rig.engine.drain(30.0)
        described = rig.engine.journal.describe(run.run_id)
    finally:
        block.touch()
        rig.store.close()
    assert [line["note"] for line in read_log(log)] == ["prepare", "act", "undo"]
    assert described is not None
    assert described["state"] == "interrupted"
    interrupted = [d for t, d in rig.events if t.endswith(".interrupted")]
    assert str(interrupted[0]["reason"]).endswith("; its on_failure steps ran")


@pytest.mark.asyncio
async def test_on_failure_steps_that_are_not_idempotent_do_not_run_for_an_abandoned_run(
    tmp_path: Path,
) -> None:
    log, block = tmp_path / "steps.log", tmp_path / "release"
    rig = EngineRig(tmp_path, [_blocking(log, block, "test.record_disruptive")])
    try:
        rig.fire("/a")
        await _until_logged(log, "act")
        await rig.engine.aclose(0.0)
        assert rig.engine.journal.in_states((RunState.RUNNING,)) == []
        assert "interrupted" in rig.kinds()
    finally:
        block.touch()
        rig.store.close()
    assert [line["note"] for line in read_log(log)] == ["prepare", "act"]
