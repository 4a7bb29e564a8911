"""Group commit of event appends on the event loop, against a real SQLite store.

What is committed is read through a second connection, as another process (or the agent
after a crash) would see the file. ``FakeLink`` stands in for the MQTT client as in
``test_mqtt_outbox.py``: it records publishes and, here, checks each published row is
already committed; the broker path is covered by ``tests/integration/test_mqtt.py``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from agent.model import Condition, ConditionState, Severity
from agent.mqtt_outbox import OutboxSender
from agent.store import Store
from agent.topics import Topics
from remediations.journal import Journal
from tests.unit.store_events import emit

TOPICS = Topics("nm/v1", "node-1")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "nodemedic.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    # A long delay: only the rule under test may commit the group.
    with Store.open(db, commit_delay=60.0) as opened:
        yield opened


def committed(db: Path) -> list[int]:
    """Sequences of the events committed to the file, read on a second connection."""
    with closing(sqlite3.connect(db)) as conn:
        return [row[0] for row in conn.execute("SELECT sequence FROM events ORDER BY sequence")]


async def until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(2000):  # 10 s
        if predicate():
            return
        await asyncio.sleep(0.005)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.asyncio
async def test_a_burst_is_committed_in_one_transaction_after_the_delay(db: Path) -> None:
    with Store.open(db, commit_delay=0.05) as store:
        commits: list[list[int]] = []
        store.on_commit(lambda: commits.append(committed(db)))
        emit(store, 10)
        assert committed(db) == [], "committed before the delay"
        await until(lambda: bool(commits), "the group's commit")
        assert commits == [list(range(1, 11))], "one commit made the whole burst durable"


@pytest.mark.asyncio
async def test_commit_limit_pending_events_commit_at_once(db: Path) -> None:
    with Store.open(db, commit_delay=60.0, commit_limit=4) as store:
        emit(store, 4)
        assert committed(db) == [1, 2, 3, 4]
        emit(store, 1)
        assert committed(db) == [1, 2, 3, 4]


def test_outside_an_event_loop_every_append_commits_at_once(store: Store, db: Path) -> None:
    emit(store, 1)
    assert committed(db) == [1]


def _conditions(store: Store) -> None:
    condition = Condition(
        rule="disk_full",
        labels=(("device", "sda"),),
        state=ConditionState.FIRING,
        severity=Severity.CRITICAL,
        value=0.97,
        since=1_700_000_000.0,
    )
    store.save_conditions([condition])


def _journal(store: Store) -> None:
    Journal(store).put("cooldown", 1)  # the same store.transaction() as a step's record


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "touch",
    [
        _conditions,
        _journal,
        lambda s: s.outbox_ack([99]),
        lambda s: s.outbox_batch(),
        lambda s: s.events(),
        lambda s: s.stats(),
        lambda s: s.query("read", "SELECT COUNT(*) FROM runs"),
        lambda s: s.outbox_used_ratio(),
    ],
    ids=["conditions", "journal", "ack", "outbox_batch", "events", "stats", "query", "used_ratio"],
)
async def test_any_other_write_or_read_commits_pending_events_first(
    store: Store, db: Path, touch: Callable[[Store], object]
) -> None:
    emit(store, 3)
    assert committed(db) == []
    touch(store)
    assert committed(db) == [1, 2, 3]


def claimed(db: Path) -> list[str]:
    """Nonces committed to the file, read on a second connection."""
    with closing(sqlite3.connect(db)) as conn:
        return [row[0] for row in conn.execute("SELECT nonce FROM command_nonces ORDER BY nonce")]


@pytest.mark.asyncio
async def test_a_nonce_claim_joins_the_group_and_commits_with_its_events(
    store: Store, db: Path
) -> None:
    emit(store, 1)
    assert store.claim_nonce("k1", "n1", expires_at=2e9, now=1.7e9)
    emit(store, 1)
    assert not store.claim_nonce("k1", "n1", expires_at=2e9, now=1.7e9), "seen in the group"
    assert (committed(db), claimed(db)) == ([], []), "nothing durable before the commit"
    store.commit()
    assert (committed(db), claimed(db)) == ([1, 2], ["n1"])


@pytest.mark.asyncio
async def test_a_pending_claim_is_committed_by_the_timer_like_an_event(db: Path) -> None:
    with Store.open(db, commit_delay=0.02) as store:
        assert store.claim_nonce("k1", "n1", expires_at=2e9, now=1.7e9)
        await until(lambda: claimed(db) == ["n1"], "the claim's commit")


@pytest.mark.asyncio
async def test_close_commits_pending_events(db: Path) -> None:
    store = Store.open(db, commit_delay=60.0)
    emit(store, 5)
    store.close()
    assert committed(db) == [1, 2, 3, 4, 5]
    with Store.open(db) as again:
        assert [row.sequence for row in again.outbox_batch()] == [1, 2, 3, 4, 5]


class CommittedLink:
    """A FakeLink that fails the test if a published event is not committed yet."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.sent: list[int] = []
        self.uncommitted: list[int] = []

    def publish_event(self, topic: str, payload: bytes, *, batch: bool) -> int:
        """Record the publish and whether its row was committed when handed over."""
        sequence = int(json.loads(payload)["sequence"])
        if sequence not in committed(self.db):
            self.uncommitted.append(sequence)
        self.sent.append(sequence)
        return len(self.sent)


@pytest.mark.asyncio
async def test_the_sender_publishes_committed_groups_in_order_and_never_an_uncommitted_row(
    db: Path,
) -> None:
    with Store.open(db, commit_delay=0.02, commit_limit=8) as store:
        link = CommittedLink(db)
        out = OutboxSender(
            store, TOPICS, window=100, publish_timeout=60.0, drain_batch=0, publishes=Counter()
        )
        task = asyncio.create_task(out.serve(link))
        for burst in range(5):
            emit(store, 3 + burst * 2)  # some below, some above the limit
            await asyncio.sleep(0)
        await until(lambda: len(link.sent) == 35, "every event published")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert link.sent == list(range(1, 36)), "in sequence order, each once"
        assert link.uncommitted == []


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from agent.store import Store

    async def main() -> None:
        store = Store.open(Path(sys.argv[1]), commit_delay=0.002)
        for i in range(200):
            store.append_event(source="nodemedic://n", type="t", subject=None,
                               data={"i": i}, time=1.7e9, outbox=True)
            if i % 7 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0.2)  # well past the commit delay
        print("appended", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def test_sigkill_after_the_commit_delay_loses_nothing(db: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db)], stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "appended"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
    with Store.open(db) as store:
        assert store.last_sequence() == 200
        assert [row.sequence for row in store.outbox_batch(limit=500)] == list(range(1, 201))
