"""The in-process EventBus: fan-out, bounded queues, drop accounting and shutdown."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agent.bus import BusClosedError, EventBus, Subscription
from agent.model import Event

WAIT = 1.0  # generous bound on waits for work that should finish immediately


def event(sequence: int) -> Event:
    return Event(
        id=f"{sequence:026d}",
        source="nodemedic://node-1",
        type="io.nodemedic.test",
        time=1_700_000_000.0 + sequence,
        sequence=sequence,
    )


def drain(subscription: Subscription) -> list[int]:
    received = []
    while subscription.qsize():
        received.append(subscription.get_nowait().sequence)
    return received


async def collect(subscription: Subscription) -> list[int]:
    return [item.sequence async for item in subscription]


def bus_records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "agent.bus"]


@pytest.mark.asyncio
async def test_every_subscriber_gets_every_event_in_publish_order() -> None:
    bus = EventBus()
    first = bus.subscribe("history")
    second = bus.subscribe("metrics")
    for sequence in range(1, 51):
        bus.publish(event(sequence))
    assert drain(first) == list(range(1, 51))
    assert drain(second) == list(range(1, 51))


@pytest.mark.asyncio
async def test_a_slow_subscriber_drops_and_counts_while_a_fast_one_gets_everything() -> None:
    bus = EventBus()
    fast = bus.subscribe("fast", maxsize=10)
    slow = bus.subscribe("slow", maxsize=5)  # never reads
    consumer = asyncio.create_task(collect(fast), name="fast-consumer")
    for sequence in range(1, 501):
        bus.publish(event(sequence))  # synchronous: returns although "slow" never reads
        if sequence % 5 == 0:
            await asyncio.sleep(0)  # let the fast consumer run, as a real loop would
    bus.close()
    received = await asyncio.wait_for(consumer, WAIT)

    assert received == list(range(1, 501))
    assert drain(slow) == [1, 2, 3, 4, 5]
    assert slow.dropped == 495
    assert bus.dropped() == {"fast": 0, "slow": 495}


@pytest.mark.asyncio
async def test_a_drop_streak_logs_one_warning_and_one_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent.bus")
    bus = EventBus()
    slow = bus.subscribe("slow", maxsize=4)
    for sequence in range(1, 15):  # 4 queued, 10 dropped
        bus.publish(event(sequence))
    for sequence in range(15, 35):  # hovering at the bound: one read, one publish
        slow.get_nowait()
        bus.publish(event(sequence))
    assert bus_records(caplog) == [
        (logging.WARNING, "bus subscriber slow is falling behind: queue full at 4, dropping events")
    ]

    drain(slow)
    bus.publish(event(35))
    assert bus_records(caplog)[1:] == [
        (logging.INFO, "bus subscriber slow has caught up after dropping 10 events")
    ]
    assert slow.dropped == 10


@pytest.mark.asyncio
async def test_a_lossless_subscriber_never_drops_and_warns_once_about_its_backlog(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent.bus")
    bus = EventBus()
    outbox = bus.subscribe("outbox", maxsize=10, lossless=True)
    for sequence in range(1, 5001):
        bus.publish(event(sequence))

    assert outbox.qsize() == 5000
    assert drain(outbox) == list(range(1, 5001))
    assert bus.dropped() == {"outbox": 0}
    assert bus_records(caplog) == [
        (logging.WARNING, "bus subscriber outbox is falling behind: 10 events queued (not dropped)")
    ]


@pytest.mark.asyncio
async def test_close_ends_iteration_after_the_queued_events() -> None:
    bus = EventBus()
    subscription = bus.subscribe("history")
    consumer = asyncio.create_task(collect(subscription), name="history-consumer")
    await asyncio.sleep(0)  # the consumer is now waiting for an event
    for sequence in (1, 2, 3):
        bus.publish(event(sequence))
    bus.close()

    assert await asyncio.wait_for(consumer, WAIT) == [1, 2, 3]
    assert subscription.ended
    assert subscription.qsize() == 0
    assert await asyncio.wait_for(collect(subscription), WAIT) == []


@pytest.mark.asyncio
async def test_close_ends_iteration_even_for_a_full_queue() -> None:
    bus = EventBus()
    subscription = bus.subscribe("tiny", maxsize=2)
    for sequence in (1, 2, 3):
        bus.publish(event(sequence))
    bus.close()
    assert await asyncio.wait_for(collect(subscription), WAIT) == [1, 2]


@pytest.mark.asyncio
async def test_get_waits_with_a_timeout_and_reports_the_end() -> None:
    bus = EventBus()
    subscription = bus.subscribe("api")
    with pytest.raises(TimeoutError):
        await subscription.get(timeout=0.01)
    with pytest.raises(asyncio.QueueEmpty):
        subscription.get_nowait()

    bus.publish(event(1))
    assert (await subscription.get(timeout=WAIT)).sequence == 1

    bus.close()
    with pytest.raises(BusClosedError):
        await subscription.get(timeout=WAIT)
    with pytest.raises(BusClosedError):
        subscription.get_nowait()


@pytest.mark.asyncio
async def test_a_closed_bus_ignores_publish_and_refuses_subscribers() -> None:
    bus = EventBus()
    subscription = bus.subscribe("history")
    bus.close()
    bus.publish(event(1))  # must not raise: producers may still be winding down
    assert subscription.qsize() == 0
    with pytest.raises(BusClosedError, match="closed"):
        bus.subscribe("late")


@pytest.mark.asyncio
async def test_unsubscribe_stops_delivery_ends_iteration_and_frees_the_name() -> None:
    bus = EventBus()
    keep = bus.subscribe("keep")
    leave = bus.subscribe("leave")
    bus.publish(event(1))
    bus.unsubscribe(leave)
    bus.unsubscribe(leave)  # idempotent
    bus.publish(event(2))

    assert await asyncio.wait_for(collect(leave), WAIT) == [1]
    assert drain(keep) == [1, 2]
    assert bus.dropped() == {"keep": 0}
    again = bus.subscribe("leave")
    bus.publish(event(3))
    assert drain(again) == [3]


@pytest.mark.asyncio
async def test_unsubscribing_a_stale_subscription_keeps_the_new_one() -> None:
    bus = EventBus()
    old = bus.subscribe("api")
    bus.unsubscribe(old)
    new = bus.subscribe("api")
    bus.unsubscribe(old)
    bus.publish(event(1))
    assert drain(new) == [1]


def test_duplicate_names_and_empty_queues_are_refused() -> None:
    bus = EventBus()
    bus.subscribe("history")
    with pytest.raises(ValueError, match="already exists"):
        bus.subscribe("history")
    with pytest.raises(ValueError, match="maxsize"):
        bus.subscribe("metrics", maxsize=0)
    assert list(bus.dropped()) == ["history"]
