"""The MQTT outbox in the store, against real SQLite files: queueing, acks, the shed policy."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agent.errors import StoreError
from agent.model import Event
from agent.store import OutboxLimits, Store

SOURCE = "nodemedic://node-1"
T0 = 1_700_000_000.0


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "nodemedic.db"


def emit(store: Store, severity: str | None = None, *, time: float = T0, n: int = 0) -> Event:
    data: dict[str, Any] = {"n": n}
    if severity is not None:
        data["severity"] = severity
    return store.append_event(
        source=SOURCE,
        type="io.nodemedic.condition.firing" if severity else "io.nodemedic.probe.failed",
        subject="disk",
        data=data,
        time=time,
        outbox=True,
    )


def queued(store: Store) -> list[int]:
    return [entry.sequence for entry in store.outbox_batch(after=0, limit=10_000)]


def test_each_event_is_queued_with_its_cloudevent_in_the_same_transaction(db_path: Path) -> None:
    with Store.open(db_path) as store:
        event = emit(store, "warning")
        store.append_event(source=SOURCE, type="io.local", subject=None, data={}, time=T0)
        (entry,) = store.outbox_batch(after=0, limit=10)
    assert entry.sequence == event.sequence == 1
    assert entry.type == "io.nodemedic.condition.firing"
    assert json.loads(entry.payload) == event.to_cloudevent()


def test_batches_are_oldest_first_after_a_cursor_and_acks_remove_rows(db_path: Path) -> None:
    with Store.open(db_path) as store:
        for n in range(10):
            emit(store, n=n)
        assert [e.sequence for e in store.outbox_batch(after=3, limit=4)] == [4, 5, 6, 7]
        assert store.outbox_ack([1, 2, 3, 99]) == 3  # an unknown sequence is ignored
        assert store.outbox_ack([2]) == 0  # acknowledged twice
        assert queued(store) == list(range(4, 11))
        stats = store.outbox_stats()
    assert stats.depth == 7
    assert stats.bytes > 0
    assert stats.oldest_time == T0


def test_the_outbox_survives_a_restart_and_outlives_the_trimmed_history(db_path: Path) -> None:
    with Store.open(db_path, max_events=100) as store:
        for n in range(150):
            emit(store, n=n)
        assert store.stats().event_count == 100
    with Store.open(db_path, max_events=100) as store:
        assert queued(store) == list(range(1, 151))
        stats = store.outbox_stats()
        assert stats.depth == 150
        before = stats.bytes
        store.outbox_ack(range(1, 51))
        assert store.outbox_stats().bytes < before


def test_when_full_it_sheds_the_lowest_severity_first_then_the_oldest(db_path: Path) -> None:
    limits = OutboxLimits(max_events=5, max_bytes=10**9)
    with Store.open(db_path, outbox_limits=limits) as store:
        critical = emit(store, "critical").sequence  # 1
        info_old = emit(store).sequence  # 2
        warning = emit(store, "warning").sequence  # 3
        info_mid = emit(store, "info").sequence  # 4
        info_new = emit(store).sequence  # 5
        assert queued(store) == [1, 2, 3, 4, 5]
        emit(store, "critical")  # 6: the oldest info (2) goes
        assert queued(store) == [critical, warning, info_mid, info_new, 6]
        emit(store, "warning")  # 7: the next oldest info (4)
        emit(store, "warning")  # 8: the last info (5)
        assert queued(store) == [critical, warning, 6, 7, 8]
        emit(store)  # 9: an info event into a full outbox of higher ones sheds itself
        assert queued(store) == [critical, warning, 6, 7, 8]
        emit(store, "critical")  # 10: now the oldest warning (3)
        assert queued(store) == [critical, 6, 7, 8, 10]
        stats = store.outbox_stats()
        assert stats.shed_total == 5
        assert stats.depth == 5
        assert stats.used_ratio == 1.0
        assert store.outbox_used_ratio() == 1.0  # the per-second figure, from the tally
        # Shed events stay in the history: only the broker misses them (as a sequence gap).
        assert store.events(since=0, limit=100)[1].sequence == info_old
    with Store.open(db_path, outbox_limits=limits) as store:
        assert store.outbox_stats().shed_total == 5  # counted durably


def test_the_byte_bound_sheds_too(db_path: Path) -> None:
    with Store.open(db_path) as store:
        size = len(store_payload(db_path, store))
    limits = OutboxLimits(max_events=1000, max_bytes=size * 3 + size // 2)
    db_path.unlink()
    with Store.open(db_path, outbox_limits=limits) as store:
        for n in range(10):
            emit(store, n=n)
        stats = store.outbox_stats()
        assert stats.depth == 3
        assert stats.bytes <= limits.max_bytes
        assert stats.shed_total == 7
        assert queued(store) == [8, 9, 10]
        assert 0.8 < stats.used_ratio <= 1.0
        assert store.outbox_used_ratio() == stats.used_ratio
        store.outbox_ack([8])
        assert store.outbox_used_ratio() == store.outbox_stats().used_ratio < stats.used_ratio


def store_payload(db_path: Path, store: Store) -> bytes:
    emit(store, n=0)
    return store.outbox_batch(after=0, limit=1)[0].payload


def test_a_failed_append_queues_nothing(db_path: Path) -> None:
    with Store.open(db_path) as store:
        emit(store)
        with pytest.raises(TypeError):
            store.append_event(
                source=SOURCE, type="x", subject=None, data={"x": object()}, time=T0, outbox=True
            )
        assert queued(store) == [1]
        assert store.outbox_stats().depth == 1


def test_a_locked_database_is_a_store_error_and_the_tally_stays_right(db_path: Path) -> None:
    with Store.open(db_path) as store:
        emit(store)
        other = sqlite3.connect(db_path, isolation_level=None, timeout=0)
        try:
            other.execute("PRAGMA busy_timeout = 0")
            other.execute("BEGIN IMMEDIATE")
            store._connection().execute("PRAGMA busy_timeout = 0")
            with pytest.raises(StoreError, match="another process holds a lock"):
                emit(store)
            with pytest.raises(StoreError):
                store.outbox_ack([1])
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert store.outbox_stats().depth == 1
        assert store.outbox_ack([1]) == 1
        assert store.outbox_stats().depth == 0
        assert store.outbox_stats().bytes == 0


def test_outbox_calls_on_a_closed_store_are_store_errors(db_path: Path) -> None:
    store = Store.open(db_path)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.outbox_stats()
    with pytest.raises(StoreError, match="closed"):
        store.outbox_used_ratio()
    with pytest.raises(StoreError, match="closed"):
        store.outbox_batch()
    with pytest.raises(ValueError, match="limit"):
        Store.open(db_path).outbox_batch(limit=0)
