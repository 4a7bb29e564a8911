"""The outbox sender against a real SQLite store and a recording link.

``FakeLink`` stands in for the MQTT client: it records each publish handed to it and
returns a message id; the test plays the broker by acknowledging ids. The broker path
itself (PUBACKs from Mosquitto, reconnects, the 11,000-event outage) is covered in
``tests/integration/test_mqtt.py`` and ``test_mqtt_drain_batch.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.mqtt_outbox import DrainedError, LinkLostError, OutboxSender
from agent.store import OutboxLimits, Store
from agent.topics import Topics
from tests.unit.store_events import emit

TOPICS = Topics("nm/v1", "node-1")


class FakeLink:
    """Records publishes: (message id, topic, payload, batch)."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str, bytes, bool]] = []

    def publish_event(self, topic: str, payload: bytes, *, batch: bool) -> int:
        """Record and number the publish."""
        mid = len(self.sent) + 1
        self.sent.append((mid, topic, payload, batch))
        return mid


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "nodemedic.db", outbox_limits=OutboxLimits())


def sender(
    store: Store,
    *,
    window: int = 4,
    drain_batch: int = 0,
    timeout: float = 60.0,
    publishes: Counter[str] | None = None,
) -> OutboxSender:
    return OutboxSender(
        store,
        TOPICS,
        window=window,
        publish_timeout=timeout,
        drain_batch=drain_batch,
        publishes=Counter() if publishes is None else publishes,
    )


async def until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(2000):  # 10 s
        if predicate():
            return
        await asyncio.sleep(0.005)
    pytest.fail(f"timed out waiting for {what}")


def depth(store: Store) -> int:
    return store.outbox_stats().depth


@pytest.mark.asyncio
async def test_rows_leave_the_outbox_only_when_acknowledged_with_at_most_window_in_flight(
    store: Store,
) -> None:
    emit(store, 10)
    link = FakeLink()
    out = sender(store, window=4)
    task = asyncio.create_task(out.serve(link))
    await until(lambda: len(link.sent) == 4, "the window filled")
    await asyncio.sleep(0.05)
    assert len(link.sent) == 4, "more than the window in flight"
    assert depth(store) == 10, "a row left before its PUBACK"

    for mid in (1, 2):
        assert out.acknowledged(mid)
    assert not out.acknowledged(99), "an id that is not an event's"
    await until(lambda: depth(store) == 8, "the two acknowledged rows deleted")
    await until(lambda: len(link.sent) == 6, "the window refilled")

    out.stop()
    while not task.done():
        for mid, *_ in link.sent:
            out.acknowledged(mid)
        await asyncio.sleep(0.005)
    with pytest.raises(DrainedError):
        await task
    assert depth(store) == 0
    sequences = [json.loads(payload)["sequence"] for _, _, payload, _ in link.sent]
    assert sequences == list(range(1, 11)), "oldest first, in order"
    assert {topic for _, topic, _, _ in link.sent} == {TOPICS.event("io.nodemedic.probe.failed")}


@pytest.mark.asyncio
async def test_the_backlog_goes_in_batches_and_later_events_one_per_message(store: Store) -> None:
    emit(store, 25)  # queued before the session: the backlog
    link = FakeLink()
    out = sender(store, window=2, drain_batch=10)
    task = asyncio.create_task(out.serve(link))
    await until(lambda: len(link.sent) == 2, "two batches in flight")
    for mid in (1, 2):
        out.acknowledged(mid)
    await until(lambda: len(link.sent) == 3, "the last batch")
    emit(store, 2)  # live events
    out.notify()
    out.acknowledged(3)
    await until(lambda: len(link.sent) == 5, "the live events")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    batches = [json.loads(payload) for _, topic, payload, batch in link.sent if batch]
    assert [len(b) for b in batches] == [10, 10, 5]
    assert [e["sequence"] for b in batches for e in b] == list(range(1, 26))
    assert all(topic == TOPICS.batch for _, topic, _, batch in link.sent if batch)
    live = [json.loads(payload) for _, _, payload, batch in link.sent if not batch]
    assert [e["sequence"] for e in live] == [26, 27]
    await until(lambda: depth(store) == 2, "the acknowledged batches deleted")
    assert [row.sequence for row in store.outbox_batch(limit=10)] == [26, 27]


@pytest.mark.asyncio
async def test_an_unacknowledged_publish_ends_the_session_and_is_sent_again(
    store: Store,
) -> None:
    emit(store, 1)
    link = FakeLink()
    publishes: Counter[str] = Counter()
    out = sender(store, timeout=0.05, publishes=publishes)
    with pytest.raises(LinkLostError, match="event 1 was not acknowledged"):
        await asyncio.wait_for(out.serve(link), 10)
    assert depth(store) == 1
    assert publishes == Counter(failed=1), "counted as failed: it will be sent again"

    again = FakeLink()
    task = asyncio.create_task(out.serve(again))
    await until(lambda: len(again.sent) == 1, "the row sent again on the next session")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
