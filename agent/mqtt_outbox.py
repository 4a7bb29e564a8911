"""The outbox sender: publishes queued events at QoS 1 and deletes them on their PUBACK.

One :class:`OutboxSender` lives as long as the publisher; :meth:`OutboxSender.serve` runs
for one MQTT session. It reads the outbox oldest first, keeps up to ``mqtt.inflight``
publishes awaiting their PUBACK, and records each acknowledged sequence; acknowledged
rows are deleted in one transaction per batch of acknowledgements rather than one per
event (a commit costs more than the publish itself). A row leaves the outbox only after
its PUBACK, so a crash between the PUBACK and the delete sends it again (at-least-once;
consumers drop duplicates by ``id``). The sender is woken by the store after each commit
of new events (:meth:`agent.store.Store.on_commit`), so on the event loop one wake-up
publishes a whole group commit, and it never reads an uncommitted row.

Design note: this module knows neither aiomqtt nor paho. The session's client is an
:class:`EventLink`: it hands a publish to paho without awaiting it and reports each
successful PUBACK by message id to :meth:`OutboxSender.acknowledged`. Awaiting an
aiomqtt ``publish`` per event costs a task, a future and a ``wait_for`` per message; a
single deadline on the oldest unacknowledged publish replaces the per-publish timeouts.

Drain batches (``mqtt.drain_batch``, off by default): the events already queued when a
session starts (the backlog of an outage, or of a stop) may be sent as CloudEvents
batches, ``application/cloudevents-batch+json``: one JSON array of up to
``drain_batch`` structured CloudEvents per message, in sequence order, on the node's
``batch`` topic (:attr:`agent.topics.Topics.batch`). Events emitted during the session
always go one per message on their type's topic. A batch's PUBACK acknowledges every
event in it.
"""

from __future__ import annotations

__all__ = ["DrainedError", "EventLink", "EventOutbox", "LinkLostError", "OutboxSender"]

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Final, Protocol

from agent.store_outbox import OutboxEntry
from agent.topics import Topics

log = logging.getLogger(__name__)

_ACK_DELAY: Final = 0.01  # seconds an acknowledgement may wait to be deleted with others
_DEADLINE_CHECK: Final = 1.0  # seconds between checks of the oldest publish's deadline
_BATCH_BYTES: Final = 256 * 1024  # payload bytes of one drain batch, at most


class LinkLostError(Exception):
    """The connection dropped (or a publish was not acknowledged in time)."""


class DrainedError(Exception):
    """Stopping, and every queued event has been acknowledged: end the session."""


class EventOutbox(Protocol):
    """The part of :class:`~agent.store.Store` the sender reads and acknowledges."""

    def outbox_batch(self, *, after: int = 0, limit: int = 100) -> list[OutboxEntry]:
        """Queued events after ``after``, oldest first."""
        ...

    def outbox_ack(self, sequences: Iterable[int]) -> int:
        """Remove acknowledged events."""
        ...

    def last_sequence(self) -> int:
        """The sequence of the newest event; 0 before the first."""
        ...

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after each commit that made new events durable."""
        ...


class EventLink(Protocol):
    """One session's client, as the sender uses it."""

    def publish_event(self, topic: str, payload: bytes, *, batch: bool) -> int:
        """Hand a QoS 1 publish to the client without waiting; returns its message id.

        Raises:
            LinkLostError: when the client cannot take it (the link is down).
        """
        ...


class OutboxSender:
    """Publishes the outbox over successive sessions; see the module docstring.

    Args:
        outbox: where queued events are read and acknowledged.
        topics: the node's topics.
        window: publishes awaiting their PUBACK at most (``mqtt.inflight``).
        publish_timeout: seconds a PUBACK may take before the link counts as dead.
        drain_batch: events per message for the backlog at connect; 0 or 1 sends it one
            event per message like live events.
        publishes: the publisher's counters (``acked``, ``failed``), updated here.
    """

    def __init__(
        self,
        outbox: EventOutbox,
        topics: Topics,
        *,
        window: int,
        publish_timeout: float,
        drain_batch: int,
        publishes: Counter[str],
    ) -> None:
        self._outbox = outbox
        self._topics = topics
        self._window = window
        self._timeout = publish_timeout
        self._drain_batch = drain_batch
        self._publishes = publishes
        self._wake = asyncio.Event()
        self._more = True  # the outbox may hold rows not read yet
        self._acked: list[int] = []
        self._flush_due = False  # the oldest acknowledgement waited _ACK_DELAY
        self._timer: asyncio.TimerHandle | None = None  # the next deadline check
        self._stopping = False
        # message id -> (sequences it carries, loop time it was handed over), oldest first
        self._inflight: dict[int, tuple[tuple[int, ...], float]] = {}
        # Woken after the store commits new events (a group of them on the event loop),
        # never per append: reading the outbox would commit each event on its own.
        outbox.on_commit(self.notify)

    def notify(self) -> None:
        """New events are in the outbox."""
        self._more = True
        self._wake.set()

    def stop(self) -> None:
        """The agent stops: publish what is queued, then end the session (DrainedError)."""
        self._stopping = True
        self._wake.set()

    def acknowledged(self, mid: int) -> bool:
        """A successful PUBACK arrived for ``mid``; False when it is not an event's."""
        sent = self._inflight.pop(mid, None)
        if sent is None:
            return False
        if not self._acked:
            asyncio.get_running_loop().call_later(_ACK_DELAY, self._acks_due)
        self._acked.extend(sent[0])
        self._publishes["acked"] += len(sent[0])
        # Wake the sender only when this frees it: a full window, a full ack batch, or
        # the last publish of a stop. An idle sender would only find nothing to do.
        if (
            len(self._inflight) == self._window - 1
            or len(self._acked) >= self._window
            or (not self._inflight and self._stopping)
        ):
            self._wake.set()
        return True

    def flush_acks(self) -> None:
        """Delete the acknowledged rows now; on a store failure keep them for the next try."""
        self._flush_due = False
        if not self._acked:
            return
        acked, self._acked = self._acked, []
        try:
            self._outbox.outbox_ack(acked)
        except Exception as err:  # a store failure: keep them and try again
            self._acked = acked + self._acked
            self._flush_due = True
            log.error(
                "MQTT: cannot remove %d acknowledged events from the outbox: %s", len(acked), err
            )

    async def serve(self, link: EventLink) -> None:
        """Publish until the link drops or, after :meth:`stop`, the outbox is empty.

        Args:
            link: the session's client.

        Raises:
            LinkLostError: when a publish cannot be handed over or is not acknowledged
                within the publish timeout.
            DrainedError: when stopping and every queued event has been acknowledged.
        """
        self._inflight.clear()  # a new session sends every unacknowledged row again
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._more = True
        # The backlog is what was queued before this session; it may go in drain batches.
        batching = self._drain_batch > 1
        backlog_through = self._outbox.last_sequence() if batching else 0
        try:
            await self._send(link, batching=batching, backlog_through=backlog_through)
        finally:
            # Whatever was in flight when the session ended is sent again on the next.
            self._publishes["failed"] += sum(len(s) for s, _ in self._inflight.values())
            self._inflight.clear()

    async def _send(self, link: EventLink, *, batching: bool, backlog_through: int) -> None:
        loop = asyncio.get_running_loop()
        pending: deque[OutboxEntry] = deque()
        after = 0
        while True:
            self._wake.clear()
            now = loop.time()
            self._check_deadline(now)
            if self._flush_due or len(self._acked) >= self._window:
                self.flush_acks()
            while len(self._inflight) < self._window:
                if len(pending) < (self._drain_batch if batching else 1) and self._more:
                    limit = max(self._window * 4, self._drain_batch if batching else 0)
                    rows = self._outbox.outbox_batch(after=after, limit=limit)
                    self._more = len(rows) == limit
                    if rows:
                        pending.extend(rows)
                        after = rows[-1].sequence
                if not pending:
                    break
                if batching and pending[0].sequence <= backlog_through:
                    self._send_batch(link, pending, backlog_through, now)
                else:
                    batching = False
                    row = pending.popleft()
                    mid = link.publish_event(self._topics.event(row.type), row.payload, batch=False)
                    self._inflight[mid] = ((row.sequence,), now)
            if self._stopping and not pending and not self._more and not self._inflight:
                self.flush_acks()
                raise DrainedError
            if self._inflight and self._timer is None:
                self._timer = loop.call_later(_DEADLINE_CHECK, self._deadline_due)
            await self._wake.wait()

    def _send_batch(
        self, link: EventLink, pending: deque[OutboxEntry], through: int, now: float
    ) -> None:
        rows: list[bytes] = []
        sequences: list[int] = []
        size = 2
        while pending and len(rows) < self._drain_batch and pending[0].sequence <= through:
            row = pending[0]
            if rows and size + len(row.payload) + 1 > _BATCH_BYTES:
                break
            pending.popleft()
            rows.append(row.payload)
            sequences.append(row.sequence)
            size += len(row.payload) + 1
        mid = link.publish_event(self._topics.batch, b"[" + b",".join(rows) + b"]", batch=True)
        self._inflight[mid] = (tuple(sequences), now)

    def _check_deadline(self, now: float) -> None:
        if not self._inflight:
            return
        sequences, sent = next(iter(self._inflight.values()))
        if now - sent > self._timeout:
            raise LinkLostError(
                f"event {sequences[0]} was not acknowledged within {self._timeout:g}s"
            )

    def _deadline_due(self) -> None:
        self._timer = None
        self._wake.set()

    def _acks_due(self) -> None:
        self._flush_due = True
        self._wake.set()
