"""The SQLite store, against real database files in a temporary directory."""

from __future__ import annotations

import math
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from agent.errors import StoreCorruptError, StoreError
from agent.model import Condition, ConditionState, Event, Severity, labelset
from agent.store import SCHEMA_VERSION, Store

SOURCE = "nodemedic://node-1"
T0 = 1_700_000_000.0
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "nodemedic.db"


def append(
    store: Store,
    count: int,
    *,
    type: str = "io.nodemedic.test",
    time: float = T0,
    data: dict[str, Any] | None = None,
) -> list[Event]:
    return [
        store.append_event(
            source=SOURCE, type=type, subject="disk", data=data or {"n": n}, time=time
        )
        for n in range(count)
    ]


def sequences(events: list[Event]) -> list[int]:
    return [event.sequence for event in events]


def id_millis(event_id: str) -> int:
    value = 0
    for char in event_id[:10]:
        value = value * 32 + CROCKFORD.index(char)
    return value


# --- sequence and ids ---------------------------------------------------------------


def test_sequence_starts_at_one_is_gap_free_and_survives_reopen(db_path: Path) -> None:
    with Store.open(db_path) as store:
        assert store.last_sequence() == 0
        first = append(store, 5)
    with Store.open(db_path) as store:
        assert store.last_sequence() == 5
        second = append(store, 3)
        assert sequences(store.events()) == list(range(1, 9))
    assert sequences(first + second) == list(range(1, 9))


def test_ids_are_unique_and_sort_in_creation_order_within_one_millisecond(
    db_path: Path,
) -> None:
    with Store.open(db_path) as store:
        events = append(store, 2000, time=T0)
    ids = [event.id for event in events]
    assert len(set(ids)) == 2000
    assert ids == sorted(ids)
    assert all(len(i) == 26 and set(i) <= set(CROCKFORD) for i in ids)
    assert {id_millis(i) for i in ids} == {int(T0 * 1000)}


def test_ids_carry_the_event_time_and_sort_across_milliseconds(db_path: Path) -> None:
    with Store.open(db_path) as store:
        early = store.append_event(source=SOURCE, type="t", subject=None, data={}, time=T0)
        late = store.append_event(source=SOURCE, type="t", subject=None, data={}, time=T0 + 0.5)
    assert id_millis(early.id) == int(T0 * 1000)
    assert id_millis(late.id) == int(T0 * 1000) + 500
    assert early.id < late.id


def test_ids_stay_ordered_when_the_clock_steps_back_even_across_restart(db_path: Path) -> None:
    with Store.open(db_path) as store:
        (first,) = append(store, 1, time=T0 + 60)
        (second,) = append(store, 1, time=T0)
    with Store.open(db_path) as store:
        (third,) = append(store, 1, time=T0 - 60)
    assert first.id < second.id < third.id


# --- history ------------------------------------------------------------------------


def test_history_is_trimmed_to_max_events_while_sequence_keeps_counting(db_path: Path) -> None:
    with Store.open(db_path, max_events=10) as store:
        append(store, 25)
        assert sequences(store.events(limit=100)) == list(range(16, 26))
        assert store.stats().event_count == 10
    with Store.open(db_path, max_events=10) as store:
        (event,) = append(store, 1)
        assert event.sequence == 26
        assert store.last_sequence() == 26
        assert sequences(store.events(limit=100)) == list(range(17, 27))


def test_events_without_cursor_are_the_newest_with_the_newest_last(db_path: Path) -> None:
    with Store.open(db_path) as store:
        append(store, 10)
        assert sequences(store.events(limit=4)) == [7, 8, 9, 10]
        assert sequences(store.events()) == list(range(1, 11))
        assert store.events(limit=0) == []


def test_a_cursor_pages_forward_through_every_event_exactly_once(db_path: Path) -> None:
    with Store.open(db_path) as store:
        append(store, 10)
        seen: list[int] = []
        cursor = 0
        while page := store.events(since=cursor, limit=3):
            assert len(page) <= 3
            seen += sequences(page)
            cursor = page[-1].sequence
        assert seen == list(range(1, 11))
        assert store.events(since=10) == []


def test_events_filter_by_exact_type_or_by_prefix(db_path: Path) -> None:
    types = [
        "io.nodemedic.condition.firing",
        "io.nodemedic.probe.failed",
        "io.nodemedic.condition.resolved",
        "io.nodemedic.conditions.other",
        "io.nodemedic.condition",
        "io.nodemedic.condition.firing",
    ]
    with Store.open(db_path) as store:
        for type_ in types:
            append(store, 1, type=type_)
        assert sequences(store.events(type="io.nodemedic.condition.firing")) == [1, 6]
        assert sequences(store.events(type="io.nodemedic.condition")) == [5]
        assert sequences(store.events(type="io.nodemedic.condition.*")) == [1, 3, 6]
        assert sequences(store.events(type="io.nodemedic.condition.")) == [1, 3, 6]
        assert sequences(store.events(type="io.nodemedic.condition.*", since=1, limit=1)) == [3]
        assert sequences(store.events(type="io.nodemedic.condition.*", limit=2)) == [3, 6]
        assert sequences(store.events(type="*")) == [1, 2, 3, 4, 5, 6]
        assert store.events(type="io.nodemedic.nothing") == []


def test_returned_event_is_what_is_read_back(db_path: Path) -> None:
    data = {"value": 0.93, "labels": {"mount": "/var"}, "tags": ["a", "b"], "ok": True}
    with Store.open(db_path) as store:
        event = store.append_event(
            source=SOURCE, type="io.nodemedic.condition.firing", subject="disk", data=data, time=T0
        )
    with Store.open(db_path) as store:
        assert store.events() == [event]
    assert event.to_cloudevent()["data"] == data
    assert event.source == SOURCE
    assert event.subject == "disk"


def test_non_finite_floats_in_data_are_stored_as_null(db_path: Path) -> None:
    data = {"nan": math.nan, "inf": math.inf, "nested": {"values": [1.5, -math.inf]}}
    with Store.open(db_path) as store:
        event = store.append_event(source=SOURCE, type="t", subject=None, data=data, time=T0)
        (stored,) = store.events()
    expected = {"nan": None, "inf": None, "nested": {"values": [1.5, None]}}
    assert event.data == expected
    assert stored.data == expected


def test_unserialisable_data_is_refused_and_takes_no_sequence(db_path: Path) -> None:
    with Store.open(db_path) as store:
        with pytest.raises(TypeError, match="not JSON-serialisable"):
            store.append_event(source=SOURCE, type="t", subject=None, data={"x": {1, 2}}, time=T0)
        (event,) = append(store, 1)
    assert event.sequence == 1


@pytest.mark.parametrize("bad_time", [math.nan, math.inf, -1.0])
def test_an_event_time_that_is_not_an_epoch_is_refused(db_path: Path, bad_time: float) -> None:
    with Store.open(db_path) as store:
        with pytest.raises(ValueError, match="event time"):
            append(store, 1, time=bad_time)
        assert store.last_sequence() == 0


def test_stats_report_count_sequence_and_size(db_path: Path) -> None:
    with Store.open(db_path, max_events=5) as store:
        append(store, 8)
        stats = store.stats()
    assert stats.event_count == 5
    assert stats.last_sequence == 8
    assert stats.size_bytes > 0
    assert stats.size_bytes % 512 == 0


# --- conditions ---------------------------------------------------------------------


def make_condition(rule: str, **changes: Any) -> Condition:
    fields: dict[str, Any] = {
        "rule": rule,
        "labels": labelset(mount="/var"),
        "state": ConditionState.FIRING,
        "severity": Severity.WARNING,
        "value": 0.93,
        "since": T0,
    }
    fields.update(changes)
    return Condition(**fields)


def test_conditions_round_trip_through_a_restart(db_path: Path) -> None:
    conditions = [
        make_condition(
            "disk_full",
            labels=labelset({"mount": "/var/lib/[a-z]+.*", "device": 'sda "1"', "zone": "ü"}),
            pending_since=T0 - 300,
            description="Filesystem almost full",
            flaps=(T0 - 100, T0 - 50.5),
        ),
        make_condition("probe_down", labels=(), state=ConditionState.OK, value=None),
        make_condition("load_high", state=ConditionState.PENDING, severity=Severity.CRITICAL),
    ]
    with Store.open(db_path) as store:
        store.save_conditions(conditions)
    with Store.open(db_path) as store:
        loaded = store.load_conditions()
    assert sorted(loaded, key=lambda c: c.rule) == sorted(conditions, key=lambda c: c.rule)


def test_a_nan_condition_value_is_stored_as_none(db_path: Path) -> None:
    with Store.open(db_path) as store:
        store.save_conditions([make_condition("cpu", value=math.nan)])
        (loaded,) = store.load_conditions()
    assert loaded.value is None


def test_saving_conditions_replaces_the_whole_set(db_path: Path) -> None:
    with Store.open(db_path) as store:
        store.save_conditions([make_condition("a"), make_condition("b")])
        store.save_conditions([make_condition("b", state=ConditionState.RESOLVED)])
        (only,) = store.load_conditions()
        store.save_conditions([])
        assert store.load_conditions() == []
    assert only.rule == "b"
    assert only.state is ConditionState.RESOLVED


def test_duplicate_conditions_are_refused_and_the_saved_set_kept(db_path: Path) -> None:
    with Store.open(db_path) as store:
        store.save_conditions([make_condition("a")])
        with pytest.raises(ValueError, match="duplicate condition"):
            store.save_conditions([make_condition("b"), make_condition("b", value=1.0)])
        assert [c.rule for c in store.load_conditions()] == ["a"]


# --- schema and file handling -------------------------------------------------------


def applied_migrations(path: Path) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
    finally:
        conn.close()


def test_migrations_apply_once_and_reopening_changes_nothing(db_path: Path) -> None:
    with Store.open(db_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        append(store, 2)
    for _ in range(2):
        with Store.open(db_path) as store:
            assert store.schema_version == SCHEMA_VERSION
            assert store.last_sequence() == 2
    assert applied_migrations(db_path) == list(range(1, SCHEMA_VERSION + 1))


def test_a_database_from_a_newer_version_is_refused(db_path: Path) -> None:
    Store.open(db_path).close()
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, description) VALUES (?, 'future')",
            (SCHEMA_VERSION + 1,),
        )
    conn.close()
    with pytest.raises(StoreError, match="newer") as caught:
        Store.open(db_path)
    assert str(db_path) in str(caught.value)


def test_a_file_that_is_not_a_database_is_refused_naming_it(db_path: Path) -> None:
    db_path.parent.mkdir()
    db_path.write_bytes(b"this is not sqlite\x00\xff" * 500)
    with pytest.raises(StoreCorruptError, match="move it aside") as caught:
        Store.open(db_path)
    assert str(db_path) in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)


def test_a_damaged_database_fails_the_integrity_check(db_path: Path) -> None:
    with Store.open(db_path, max_events=1000) as store:
        append(store, 200, data={"padding": "x" * 100})
    raw = bytearray(db_path.read_bytes())
    page_size = int.from_bytes(raw[16:18], "big")
    # Offset 7 of a b-tree page header counts fragmented bytes; a wrong count is damage
    # that opening the file does not notice, only the check does.
    raw[len(raw) - page_size + 7] = 0x7F
    db_path.write_bytes(bytes(raw))
    with pytest.raises(StoreCorruptError, match="integrity check") as caught:
        Store.open(db_path)
    assert str(db_path) in str(caught.value)


def test_an_unusable_state_directory_is_reported(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("a file where the state directory should be")
    path = tmp_path / "afile" / "nodemedic.db"
    with pytest.raises(StoreError, match="state directory") as caught:
        Store.open(path)
    assert str(path) in str(caught.value)


def test_a_full_disk_is_reported_and_costs_no_sequence(db_path: Path) -> None:
    with Store.open(db_path) as store:
        append(store, 1)
        conn = store._conn
        assert conn is not None
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        conn.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: "disk full"
        with pytest.raises(StoreError, match="full") as caught:
            append(store, 50, data={"padding": "x" * 2000})
        assert str(db_path) in str(caught.value)
        full_at = store.last_sequence()
        conn.execute("PRAGMA max_page_count = 1073741823")
        (event,) = append(store, 1)
    assert event.sequence == full_at + 1


def test_the_state_directory_and_file_are_private(db_path: Path) -> None:
    Store.open(db_path).close()
    assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600


def test_the_database_uses_wal(db_path: Path) -> None:
    with Store.open(db_path):
        conn = sqlite3.connect(db_path)
        try:
            (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        finally:
            conn.close()
    assert mode == "wal"


def test_a_closed_store_raises_store_error(db_path: Path) -> None:
    store = Store.open(db_path)
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.events()
    with pytest.raises(StoreError, match="closed"):
        append(store, 1)


def test_invalid_arguments_are_refused(db_path: Path) -> None:
    with pytest.raises(ValueError, match="max_events"):
        Store.open(db_path, max_events=0)
    with Store.open(db_path) as store, pytest.raises(ValueError, match="limit"):
        store.events(limit=-1)
