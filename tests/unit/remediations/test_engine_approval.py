"""Runs waiting for an approval end at their deadline, whether or not anyone asks.

A real SQLite store backs the engine and its settable clock; the deadline timer is a
real timer on the test's event loop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from remediations.model import Playbook, RunState
from tests.remediation_actions import read_log
from tests.unit.remediations.engine_fixture import EngineRig, playbook


def _gated(log: Path, timeout: str) -> Playbook:
    return playbook(
        "gated",
        steps=[{"action": "test.record", "params": {"log": str(log), "note": "act"}}],
        safety={"approval": "required", "approval_timeout": timeout},
    )


def _state(rig: EngineRig, run_id: str) -> Any:
    described = rig.engine.journal.describe(run_id)
    assert described is not None
    return described["state"]


def _skips(rig: EngineRig) -> list[str]:
    return [str(d["reason"]) for t, d in rig.events if t.endswith(".skipped")]


@pytest.mark.asyncio
async def test_a_run_nobody_approves_is_skipped_at_its_deadline(tmp_path: Path) -> None:
    log = tmp_path / "steps.log"
    rig = EngineRig(tmp_path, [_gated(log, "1s")])
    try:
        run = rig.engine.request("gated", "/a")
        assert _state(rig, run.run_id) == RunState.AWAITING_APPROVAL
        rig.now += 1.5  # the engine's clock passes the deadline; the loop's timer fires
        async with asyncio.timeout(30):
            while _state(rig, run.run_id) != RunState.SKIPPED:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await rig.engine.aclose(0.0)
    finally:
        rig.store.close()
    assert _skips(rig) == ["no approval arrived before its deadline 2023-11-14T22:13:21Z"]
    assert read_log(log) == []


@pytest.mark.asyncio
async def test_a_restart_keeps_a_run_waiting_until_its_deadline_and_ends_it_after(
    tmp_path: Path,
) -> None:
    log = tmp_path / "steps.log"
    rig = EngineRig(tmp_path, [_gated(log, "1h")])
    try:
        early = rig.engine.request("gated", "/a")
        rig.now += 1800
        late = rig.engine.request("gated", "/b")
        rig.restart()  # half-way through the first run's hour: both still wait
        assert _state(rig, early.run_id) == _state(rig, late.run_id) == "awaiting_approval"

        rig.now += 2400  # down past the first deadline, not the second
        rig.restart()
        assert _state(rig, early.run_id) == RunState.SKIPPED
        assert _state(rig, late.run_id) == RunState.AWAITING_APPROVAL
        assert len(_skips(rig)) == 1

        rig.engine.approve(late.run_id, by="operator")
        assert await rig.engine.drain(30.0)
        assert _state(rig, late.run_id) == RunState.SUCCEEDED
        await rig.engine.aclose(0.0)
    finally:
        rig.store.close()
    assert [line["note"] for line in read_log(log)] == ["act"]
