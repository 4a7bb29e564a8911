"""Live updates for the status page: ``GET /v1/stream`` as server-sent events.

One bus subscriber (``status-stream``) feeds a :class:`StreamHub`, which copies every
message to each connected client's own bounded queue. Messages are SSE events named:

* ``event``: a recorded event as a CloudEvent, with the event's sequence as the SSE id
  (a reconnecting browser sends ``Last-Event-ID`` and is replayed what it missed);
* ``snapshot``: the node's summary and condition set, shortly after condition,
  remediation or MQTT events (a burst makes one) and at every history point;
* ``sample``: a new point of the status page's charts;
* ``resync``: the client fell behind and its queue was emptied; the data is a fresh
  snapshot, and the client should reload the event list.

A slow client costs at most its queue bound: when full, its queue is dropped and
replaced by one ``resync``. A client that went away is noticed at the latest by the
next heartbeat comment, and its queue is removed.
"""

from __future__ import annotations

__all__ = [
    "CLIENT_QUEUE",
    "HEARTBEAT",
    "MAX_CLIENTS",
    "SNAPSHOT_DELAY",
    "StreamClient",
    "StreamHub",
    "StreamMessage",
]

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from agent.api_errors import RequestError
from agent.bus import EventBus
from agent.model import Event
from agent.view import AgentView

log = logging.getLogger(__name__)

HEARTBEAT: Final = 15.0
"""Seconds between heartbeat comments on an idle stream."""
CLIENT_QUEUE: Final = 256
"""Messages a client may fall behind by before it is told to resync."""
MAX_CLIENTS: Final = 32
"""Streams served at once; more get 503."""
REPLAY_LIMIT: Final = 200
"""Events replayed at most to a client reconnecting with ``Last-Event-ID``."""

SNAPSHOT_DELAY: Final = 0.2
"""Seconds a snapshot waits after a condition event, so a burst of them makes one."""

SUBSCRIBER = "status-stream"
_SNAPSHOT_PREFIXES = (
    "io.nodemedic.condition.",
    "io.nodemedic.remediation.",
    "io.nodemedic.mqtt.",
)

Snapshot = Callable[[], Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """One server-sent event.

    Attributes:
        event: the SSE event name (``event``, ``snapshot``, ``sample``, ``resync``).
        data: the JSON text.
        id: the SSE id (an event's sequence), or None.
    """

    event: str
    data: str
    id: str | None = None

    @classmethod
    def of_event(cls, event: Event) -> StreamMessage:
        """The message carrying a recorded event."""
        return cls("event", _dumps(event.to_cloudevent()), str(event.sequence))


class StreamClient:
    """One connected stream's bounded queue.

    Args:
        maxsize: messages it may hold; past that it is emptied and told to resync.
        resync: builds the ``resync`` message (a fresh snapshot).
    """

    def __init__(self, *, maxsize: int, resync: Callable[[], StreamMessage]) -> None:
        if maxsize < 2:
            raise ValueError(f"maxsize must be at least 2, got {maxsize}")
        self._queue: deque[StreamMessage] = deque()
        self._maxsize = maxsize
        self._resync = resync
        self._wake = asyncio.Event()
        self._closed = False
        self.resyncs = 0
        """Times this client fell behind and was told to resync."""

    @property
    def closed(self) -> bool:
        """True once the hub has closed this stream."""
        return self._closed

    def qsize(self) -> int:
        """Messages waiting to be sent."""
        return len(self._queue)

    def offer(self, message: StreamMessage) -> None:
        """Queue ``message``; never blocks. A full queue is replaced by one resync."""
        if self._closed:
            return
        if len(self._queue) >= self._maxsize:
            self._queue.clear()
            self.resyncs += 1
            message = self._resync()
        self._queue.append(message)
        self._wake.set()

    def close(self) -> None:
        """End the stream once the queued messages are sent."""
        self._closed = True
        self._wake.set()

    async def next(self, timeout: float) -> StreamMessage | None:  # noqa: ASYNC109  (bounded wait)
        """The next message, or None after ``timeout`` seconds or once closed and drained."""
        if not self._queue and not self._closed:
            self._wake.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                return None
        return self._queue.popleft() if self._queue else None


class StreamHub:
    """Fans the bus, snapshots and chart points out to every connected stream.

    Args:
        view: the agent (for the replay of missed events).
        snapshot: builds the node's summary and conditions (JSON-ready).
        heartbeat: seconds between heartbeat comments.
        client_queue: each client's queue bound.
        max_clients: streams served at once.
    """

    def __init__(
        self,
        view: AgentView,
        snapshot: Snapshot,
        *,
        heartbeat: float = HEARTBEAT,
        client_queue: int = CLIENT_QUEUE,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        if not heartbeat > 0:
            raise ValueError(f"heartbeat must be positive, got {heartbeat!r}")
        self._view = view
        self._snapshot = snapshot
        self._heartbeat = heartbeat
        self._client_queue = client_queue
        self._max_clients = max_clients
        self._clients: set[StreamClient] = set()
        self._closed = False
        self._pending_snapshot: asyncio.TimerHandle | None = None

    @property
    def clients(self) -> int:
        """Streams connected now."""
        return len(self._clients)

    async def follow(self, bus: EventBus) -> None:
        """Copy the bus's events to every client until the bus closes (run as a task)."""
        subscription = bus.subscribe(SUBSCRIBER, maxsize=1000)
        try:
            async for event in subscription:
                if self._clients:
                    self._dispatch(event)
        finally:
            bus.unsubscribe(subscription)

    def _dispatch(self, event: Event) -> None:
        self.publish(StreamMessage.of_event(event))
        if event.type.startswith(_SNAPSHOT_PREFIXES) and self._pending_snapshot is None:
            # Coalesced: a storm of condition changes costs a few snapshots a second.
            loop = asyncio.get_running_loop()
            self._pending_snapshot = loop.call_later(SNAPSHOT_DELAY, self._send_snapshot)

    def _send_snapshot(self) -> None:
        self._pending_snapshot = None
        if self._clients:
            self.publish(self._snapshot_message("snapshot"))

    def publish(self, message: StreamMessage) -> None:
        """Queue ``message`` for every client."""
        for client in self._clients:
            client.offer(message)

    def publish_sample(self, at: float, values: Mapping[str, float]) -> None:
        """Send a new chart point, and a snapshot (uptime, link, readiness move too)."""
        if self._clients:
            self.publish(StreamMessage("sample", _dumps({"time": at, "values": dict(values)})))
            self.publish(self._snapshot_message("snapshot"))

    def close(self) -> None:
        """End every stream (the server is stopping); later connections get 503."""
        self._closed = True
        if self._pending_snapshot is not None:
            self._pending_snapshot.cancel()
            self._pending_snapshot = None
        for client in self._clients:
            client.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/stream``: the server-sent event stream."""
        if set(request.query):
            raise RequestError(400, "unknown query parameter", "/v1/stream takes no parameters")
        if self._closed:
            raise RequestError(503, "shutting down", "the agent is stopping; reconnect later")
        if len(self._clients) >= self._max_clients:
            raise RequestError(
                503,
                "too many streams",
                f"at most {self._max_clients} streams are served at once; retry later",
            )
        client = StreamClient(
            maxsize=self._client_queue, resync=lambda: self._snapshot_message("resync")
        )
        self._clients.add(client)
        log.debug("stream client connected (%d now)", len(self._clients))
        response = EventSourceResponse(ping_interval=self._heartbeat, headers=_NO_SNIFF)
        response.headers["Cache-Control"] = "no-store"  # aiohttp-sse sets no-cache
        try:
            await response.prepare(request)
            async with response:
                for opening in self._opening(response.last_event_id):
                    await response.send(opening.data, id=opening.id, event=opening.event)
                while response.is_connected() and not _gone(request):
                    message = await client.next(timeout=self._heartbeat)
                    if message is not None:
                        await response.send(message.data, id=message.id, event=message.event)
                    elif client.closed:
                        break
        except (ConnectionResetError, TimeoutError):
            log.debug("stream client went away")
        finally:
            self._clients.discard(client)
            log.debug("stream client disconnected (%d left)", len(self._clients))
        return response

    def _opening(self, last_event_id: str | None) -> list[StreamMessage]:
        """What a new stream starts with: the events it missed, then a snapshot."""
        messages: list[StreamMessage] = []
        if last_event_id is not None and last_event_id.isdigit() and len(last_event_id) < 19:
            missed = self._view.events(type=None, since=int(last_event_id), limit=REPLAY_LIMIT)
            messages += [StreamMessage.of_event(event) for event in missed]
        messages.append(self._snapshot_message("snapshot"))
        return messages

    def _snapshot_message(self, name: str) -> StreamMessage:
        return StreamMessage(name, _dumps(self._snapshot()))


def _gone(request: web.Request) -> bool:
    """True once the client's connection is closed (noticed at the latest by a heartbeat)."""
    transport = request.transport
    return transport is None or transport.is_closing()


_NO_SNIFF = {"X-Content-Type-Options": "nosniff"}


def _dumps(payload: Mapping[str, Any]) -> str:
    try:
        return json.dumps(payload, default=str, allow_nan=False, separators=(",", ":"))
    except ValueError:
        # NaN and infinity are not JSON: like the rest of the API, they travel as null.
        text = json.dumps(payload, default=str)
        return json.dumps(json.loads(text, parse_constant=lambda _: None), separators=(",", ":"))
