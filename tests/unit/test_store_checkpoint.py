"""WAL checkpoints off the event loop keep the WAL file bounded, against real SQLite files."""

from __future__ import annotations

from pathlib import Path

from agent.store import OutboxLimits, Store

EVENTS = 3_000  # about 60 MB of WAL if nothing checkpointed it
WAL_BOUND = 24 * 1024 * 1024


def test_many_events_leave_a_bounded_wal_and_all_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nodemedic.db"
    store = Store.open(path, max_events=EVENTS, outbox_limits=OutboxLimits())
    for i in range(EVENTS):
        store.append_event(
            source="nodemedic://node-1",
            type="io.nodemedic.probe.failed",
            subject="disk",
            data={"i": i, "pad": "x" * 300},
            time=1_700_000_000.0 + i,
            outbox=True,
        )
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_size < WAL_BOUND, f"the WAL grew to {wal.stat().st_size} bytes"
    store.close()
    assert not wal.exists() or wal.stat().st_size == 0, "closing checkpoints the WAL"

    with Store.open(path) as again:
        assert again.last_sequence() == EVENTS
        assert again.outbox_stats().depth == EVENTS
