"""The journal's cached reads follow every write, and what depends on time still moves.

A status reply reads the pause switch, the breaker markers and every playbook's run
history from memory after the first read; these tests change each through the engine
(the journal's only writer) and check the status, and the engine's view, change with it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from remediations.breaker import BreakerState
from remediations.journal import Journal
from remediations.model import RunState
from tests.unit.remediations.engine_fixture import T0, EngineRig, playbook


@pytest.fixture
def rig(tmp_path: Path) -> EngineRig:
    return EngineRig(tmp_path, [playbook()])


def test_the_pause_switch_read_from_memory_follows_pause_resume_and_its_lapse(
    rig: EngineRig,
) -> None:
    assert rig.engine.paused() is None
    rig.engine.set_paused(True, by="alice", reason="maintenance")
    assert rig.engine.paused() == "paused by alice: maintenance"
    rig.engine.set_paused(False, by="alice")
    assert rig.engine.paused() is None
    rig.engine.set_paused(True, by="fleet", reason="window", until=T0 + 60)
    assert rig.engine.paused() == "paused by fleet: window"
    rig.now = T0 + 61
    assert rig.engine.paused() is None, "a cached fleet pause still lapses on time"


def test_a_value_read_from_memory_is_a_fresh_copy(rig: EngineRig) -> None:
    rig.engine.set_paused(True, by="alice", reason="maintenance")
    first = rig.engine.journal.get("pause")
    first["by"] = "mallory"
    assert rig.engine.journal.get("pause")["by"] == "alice"


def test_the_breaker_follows_a_trip_and_a_reset(rig: EngineRig) -> None:
    fix_disk = rig.playbooks[0]
    assert rig.engine.breaker(fix_disk).state is BreakerState.CLOSED
    rig.engine.journal.put("breaker_trip:fix-disk", T0)
    assert rig.engine.breaker(fix_disk).state is BreakerState.OPEN
    rig.now = T0 + 1
    rig.engine.reset_breaker("fix-disk", by="alice")
    assert rig.engine.breaker(fix_disk).state is BreakerState.CLOSED


def test_the_history_follows_new_runs_and_their_transitions(rig: EngineRig) -> None:
    journal = rig.engine.journal
    assert journal.history("fix-disk") == []
    run = journal.create(
        playbook="fix-disk",
        target="/var",
        source="test",
        mode="enforce",
        disruptive=False,
        trigger={},
        now=T0,
    )
    assert [r.run_id for r in journal.history("fix-disk")] == [run.run_id]
    assert journal.history("fix-disk", "/var")[0].state is RunState.REQUESTED
    journal.history("fix-disk").clear()  # a caller's list is its own
    for _ in range(3):
        journal.transition(run.run_id, RunState.FAILED, T0 + 1)
    assert journal.history("fix-disk", "/var")[0].state is RunState.FAILED
    assert journal.history("fix-disk")[0].finished == T0 + 1
    # What another journal on the same file reads agrees with the cached view.
    fresh = Journal(rig.store)
    assert fresh.history("fix-disk") == journal.history("fix-disk")
