"""The in-process EventBus: fans every event out to named subscribers.

A slow subscriber must never stall a probe, so :meth:`EventBus.publish` is synchronous
and never blocks: each subscriber has its own bounded queue, and when it is full the
event is dropped *for that subscriber only* and counted (``EventBus.dropped()`` feeds a
metric). A warning is logged when a subscriber starts dropping and an info line when it
has caught up, not once per event.

``lossless`` subscribers (the MQTT outbox) are never dropped: their queue is unbounded.
That is safe because durability does not rest on the queue: every event is written to
the store before it is published, so a lossless consumer that falls behind, or a crash,
loses nothing the store does not still hold. For them ``maxsize`` is only the backlog at
which a warning is logged.

Everything here must be used from the event loop's thread.
"""

from __future__ import annotations

__all__ = ["BusClosedError", "EventBus", "Subscription"]

import asyncio
import logging

from agent.errors import BusClosedError
from agent.model import Event

logger = logging.getLogger(__name__)


class Subscription:
    """One subscriber's queue of events, in publish order.

    Iterate it with ``async for``; iteration yields the events already queued and then
    ends once the bus is closed or the subscription is removed.
    """

    def __init__(self, name: str, *, maxsize: int, lossless: bool) -> None:
        """Create an open subscription; use :meth:`EventBus.subscribe` instead."""
        if maxsize < 1:
            raise ValueError(f"subscriber {name!r}: maxsize must be at least 1, got {maxsize}")
        self._name = name
        self._maxsize = maxsize
        self._lossless = lossless
        # Unbounded underneath: the bound is enforced in _offer, which leaves room for
        # the end-of-stream marker (None) however full the queue is.
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._ended = False
        self._dropped = 0
        self._behind = False  # in a streak of drops (or, lossless, over the backlog mark)
        self._streak = 0

    @property
    def name(self) -> str:
        """The subscriber's name, unique on its bus."""
        return self._name

    @property
    def lossless(self) -> bool:
        """True if events are never dropped for this subscriber."""
        return self._lossless

    @property
    def maxsize(self) -> int:
        """The queue bound (for lossless subscribers: the backlog that logs a warning)."""
        return self._maxsize

    @property
    def dropped(self) -> int:
        """Events dropped for this subscriber because its queue was full."""
        return self._dropped

    @property
    def ended(self) -> bool:
        """True once the bus was closed or the subscription removed."""
        return self._ended

    def qsize(self) -> int:
        """Events waiting to be read."""
        return self._queue.qsize() - (1 if self._ended else 0)

    def get_nowait(self) -> Event:
        """The next event without waiting.

        Raises:
            asyncio.QueueEmpty: if no event is waiting.
            BusClosedError: if the subscription has ended and every event was read.
        """
        return self._unwrap(self._queue.get_nowait())

    async def get(self, timeout: float) -> Event:  # noqa: ASYNC109  (required: waits are bounded)
        """The next event, waiting up to ``timeout`` seconds.

        Raises:
            TimeoutError: if no event arrives in time.
            BusClosedError: if the subscription has ended and every event was read.
        """
        async with asyncio.timeout(timeout):
            item = await self._queue.get()
        return self._unwrap(item)

    def __aiter__(self) -> Subscription:
        """The subscription iterates itself."""
        return self

    async def __anext__(self) -> Event:
        """The next event; stops once the subscription has ended and is drained."""
        try:
            return self._unwrap(await self._queue.get())
        except BusClosedError:
            raise StopAsyncIteration from None

    def _unwrap(self, item: Event | None) -> Event:
        if item is None:
            # Put the marker back so every later read (and any other reader) ends too.
            self._queue.put_nowait(None)
            raise BusClosedError(f"subscription {self._name!r} has ended")
        return item

    def _offer(self, event: Event) -> None:
        """Queue ``event`` unless full; never blocks or raises."""
        if self._ended:
            return
        backlog = self._queue.qsize()
        if backlog >= self._maxsize:
            if not self._behind:
                self._behind = True
                self._streak = 0
                if self._lossless:
                    logger.warning(
                        "bus subscriber %s is falling behind: %d events queued (not dropped)",
                        self._name,
                        backlog,
                    )
                else:
                    logger.warning(
                        "bus subscriber %s is falling behind: queue full at %d, dropping events",
                        self._name,
                        self._maxsize,
                    )
            if not self._lossless:
                self._dropped += 1
                self._streak += 1
                return
        elif self._behind and backlog <= self._maxsize // 2:
            # Hysteresis: recovering only once half drained keeps a subscriber that hovers
            # at the bound from logging on every event.
            self._behind = False
            if self._lossless:
                logger.info("bus subscriber %s has caught up", self._name)
            else:
                logger.info(
                    "bus subscriber %s has caught up after dropping %d events",
                    self._name,
                    self._streak,
                )
        self._queue.put_nowait(event)

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(None)


class EventBus:
    """Fans each published event out to every subscriber's queue."""

    def __init__(self) -> None:
        """Create an open bus with no subscribers."""
        self._subscriptions: dict[str, Subscription] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def subscribe(self, name: str, *, maxsize: int = 1000, lossless: bool = False) -> Subscription:
        """Add a subscriber that receives every event published from now on.

        Args:
            name: unique on this bus; used in logs and the dropped-events metric.
            maxsize: the queue bound; beyond it events are dropped for this subscriber.
                For a lossless subscriber, the backlog at which a warning is logged.
            lossless: never drop; the queue is unbounded (see the module docstring).

        Raises:
            ValueError: if ``name`` is taken or ``maxsize`` is less than 1.
            BusClosedError: if the bus is closed.
        """
        if self._closed:
            raise BusClosedError(f"cannot subscribe {name!r}: the event bus is closed")
        if name in self._subscriptions:
            raise ValueError(f"a bus subscriber named {name!r} already exists")
        subscription = Subscription(name, maxsize=maxsize, lossless=lossless)
        self._subscriptions[name] = subscription
        logger.debug("bus subscriber %s added (maxsize %d, lossless %s)", name, maxsize, lossless)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Remove ``subscription``; its iteration ends after the events already queued.

        Idempotent: removing a subscription that is not on the bus does nothing.
        """
        if self._subscriptions.get(subscription.name) is subscription:
            del self._subscriptions[subscription.name]
            logger.debug("bus subscriber %s removed", subscription.name)
        subscription._end()

    def publish(self, event: Event) -> None:
        """Queue ``event`` for every subscriber; never blocks and never raises.

        After :meth:`close` the event is ignored (the store still holds it).
        """
        if self._closed:
            logger.debug("bus closed: not publishing event %s", event.sequence)
            return
        for subscription in self._subscriptions.values():
            subscription._offer(event)

    def dropped(self) -> dict[str, int]:
        """Events dropped so far, per current subscriber name."""
        return {name: sub.dropped for name, sub in self._subscriptions.items()}

    def close(self) -> None:
        """End every subscription (after its queued events); idempotent."""
        if self._closed:
            return
        self._closed = True
        for subscription in self._subscriptions.values():
            subscription._end()
        logger.debug("event bus closed")
