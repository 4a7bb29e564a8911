"""The store's bounds that are kept lazily: the trimmed history and the nonce cache.

Real SQLite files; what the table holds is counted on a second connection, as another
process would see the file, and what a reader is shown through the store's own reads.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from agent.store import NONCE_SWEEP_EVERY, TRIM_EVERY, Store

SOURCE = "nodemedic://node-1"
T0 = 1_700_000_000.0


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nodemedic.db"


def rows(db: Path, table: str) -> int:
    with closing(sqlite3.connect(db)) as conn:
        (count,) = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()  # noqa: S608  (test tables)
    return int(count)


def append_one(store: Store, n: int, *, type: str = "io.nodemedic.test") -> None:
    store.append_event(source=SOURCE, type=type, subject=None, data={"n": n}, time=T0 + n)


@pytest.mark.parametrize("max_events", [1, 10, TRIM_EVERY + 3])
def test_the_history_shows_exactly_max_events_and_holds_at_most_trim_every_more(
    db_path: Path, max_events: int
) -> None:
    with Store.open(db_path, max_events=max_events) as store:
        for n in range(1, 3 * TRIM_EVERY + 2):
            append_one(store, n)
            shown = [event.sequence for event in store.events(limit=10_000)]
            assert shown == list(range(max(1, n - max_events + 1), n + 1))
            assert store.stats().event_count == len(shown)
            held = rows(db_path, "events")
            assert held <= max_events + TRIM_EVERY - 1, f"after {n} appends the table holds {held}"
        assert rows(db_path, "events") < 3 * TRIM_EVERY, "the table was trimmed"


def test_cursor_and_type_reads_never_reach_past_the_history(db_path: Path) -> None:
    with Store.open(db_path, max_events=5) as store:
        for n in range(1, 21):
            append_one(store, n, type="io.nodemedic.even" if n % 2 == 0 else "io.nodemedic.odd")
        assert rows(db_path, "events") > 5, "the trim has not run yet: rows wait for it"
        assert [e.sequence for e in store.events(since=0, limit=100)] == [16, 17, 18, 19, 20]
        even = store.events(type="io.nodemedic.even", limit=100)
        assert [e.sequence for e in even] == [16, 18, 20]
        assert [e.sequence for e in store.events(type="io.nodemedic.*", limit=2)] == [19, 20]


def test_a_smaller_max_events_after_a_restart_shows_only_the_newest(db_path: Path) -> None:
    with Store.open(db_path, max_events=100) as store:
        for n in range(1, 51):
            append_one(store, n)
    with Store.open(db_path, max_events=3) as store:
        assert [e.sequence for e in store.events(limit=100)] == [48, 49, 50]
        assert store.stats().event_count == 3
        for n in range(51, 51 + TRIM_EVERY):
            append_one(store, n)
        assert rows(db_path, "events") <= 3 + TRIM_EVERY - 1


def test_expired_nonces_are_forgotten_within_the_sweep_interval(db_path: Path) -> None:
    with Store.open(db_path) as store:
        now = T0
        for n in range(200):
            now = T0 + n
            assert store.claim_nonce("k1", f"nonce-{n:04d}", expires_at=now + 10, now=now)
            # Unexpired nonces are all kept; expired ones at most a sweep interval longer.
            assert rows(db_path, "command_nonces") <= 10 + NONCE_SWEEP_EVERY + 1
        assert not store.claim_nonce("k1", "nonce-0199", expires_at=now + 10, now=now)


def test_a_clock_stepped_back_still_sweeps(db_path: Path) -> None:
    with Store.open(db_path) as store:
        assert store.claim_nonce("k1", "future", expires_at=T0 + 20, now=T0 + 10)
        assert store.claim_nonce("k1", "early", expires_at=T0 - 900, now=T0 - 1000)
        # The clock is back at T0 - 1000: a sweep ran there and kept both (unexpired).
        assert rows(db_path, "command_nonces") == 2
        assert store.claim_nonce("k1", "later", expires_at=T0 + 30, now=T0 + 25)
        assert rows(db_path, "command_nonces") == 1, "both earlier nonces expired and swept"
