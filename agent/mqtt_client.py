"""The agent's session client: aiomqtt's, with paho's per-packet work cut where it costs.

Per event and per fleet command, paho-mqtt's pure-Python packet handling was most of
the agent's MQTT CPU: three ``recv`` calls per packet read, a ``Properties`` and a
``ReasonCode`` object per PUBACK, a ``Properties``, an ``MQTTMessage`` and a condition
variable per PUBLISH, one ``send`` per packet and a writer registered and removed with
the event loop for each burst. :class:`SessionPaths`, mixed into aiomqtt's client by
:mod:`agent.mqtt` (its ``SessionClient``), keeps aiomqtt's lifecycle and
paho's protocol state and changes four things:

* reading: one ``recv`` takes whatever the socket holds and every complete packet in
  it is handled; PUBACKs of the fast publishes below and command PUBLISHes on the
  subscribed topics are read by :mod:`agent.mqtt_wire`, every other packet (and any
  unusual shape of those) by paho's own handlers, as before;
* events and command replies are written as QoS 1 PUBLISH packets directly, with
  properties packed once, and tracked by message id here rather than in paho's
  message table (the outbox and its deadline keep them; a session's unacknowledged
  events are sent again on the next one, so paho's retry on reconnect is not needed);
* writing: packets queued during one pass of the event loop leave in one ``send``,
  scheduled with ``call_soon`` instead of a writer registration per burst; the writer
  is registered only when the socket is full;
* commands go from the reader straight to the handler, not through aiomqtt's queue.

A PUBACK with a failure reason code (MQTT 5: the broker's ACL refused the publish)
leaves the publish unconfirmed and sets :attr:`SessionPaths.refused`, for fast and
paho publishes alike. The overridden paho methods are those of paho-mqtt 2.2
(pyproject pins it); ``tests/unit/test_mqtt_wire.py`` fails if they change.
"""

from __future__ import annotations

__all__ = ["CommandHandler", "SessionPaths"]

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Final, cast

import paho.mqtt.client as paho
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.mqtt_outbox import LinkLostError
from agent.mqtt_wire import (
    CONTENT_TYPE,
    CORRELATION_DATA,
    PUBACK,
    PUBLISH,
    CommandPublish,
    binary_property,
    decode_command,
    pack_length,
    properties_block,
    puback_reason,
    string_property,
)

log = logging.getLogger(__name__)

CommandHandler = Callable[["SessionPaths", str, CommandPublish], None]
"""Called with the client, the topic and the message for each command PUBLISH."""

# Bytes one read takes: dozens of PUBACKs or commands a wake-up, yet a flood of commands
# (each verified on the loop) holds the event loop for a bounded time per read.
_READ_SIZE: Final = 16384
_DISCONNECT: Final = 0xE0
_SUCCESS: Final = MQTTErrorCode.MQTT_ERR_SUCCESS
_EVENT, _REPLY = True, False  # what a fast publish's message id carries


class _PahoSession(paho.Client):
    """paho's client with the fast paths; aiomqtt builds a plain one, then it becomes this.

    Only :meth:`_speed_up` sets the attributes below (aiomqtt constructs paho's client
    itself and offers no factory, so the instance's class is switched after).
    """

    _owner: SessionPaths
    _rx: bytearray
    _rx_sock: object
    _fast_mids: dict[int, bool]
    _topic_heads: dict[str, bytes]
    _command_topics: dict[bytes, str]
    _flush_due: bool
    _loop_thread: int
    _session_loop: asyncio.AbstractEventLoop
    _v5: bool

    def _speed_up(self, owner: SessionPaths, command_topics: frozenset[str]) -> None:
        self._owner = owner
        self._rx = bytearray()
        self._rx_sock = None
        self._fast_mids = {}
        self._topic_heads = {}
        self._command_topics = {topic.encode(): topic for topic in command_topics}
        self._flush_due = False
        self._loop_thread = threading.get_ident()
        self._session_loop = asyncio.get_running_loop()
        self._v5 = self._protocol == MQTTProtocolVersion.MQTTv5

    # -- writing ---------------------------------------------------------------------

    def publish_fast(self, topic: str, payload: bytes, properties: bytes, kind: bool) -> int:
        """Queue a QoS 1 PUBLISH; ``properties`` is the packed field (empty for 3.1.1)."""
        if self._sock is None:
            raise LinkLostError("cannot publish: The client is not currently connected.")
        head = self._topic_heads.get(topic)
        if head is None:
            encoded = topic.encode()
            self._raise_for_invalid_topic(encoded)
            if not encoded:
                raise ValueError("Invalid topic.")
            head = len(encoded).to_bytes(2, "big") + encoded
            if len(self._topic_heads) < 256:
                self._topic_heads[topic] = head
        mid = self._mid_generate()
        length = len(head) + 2 + len(properties) + len(payload)
        packet = b"".join(
            (b"\x32", pack_length(length), head, mid.to_bytes(2, "big"), properties, payload)
        )
        self._fast_mids[mid] = kind
        self._packet_queue(PUBLISH | 0x02, packet, mid, 1)
        return mid

    def _mid_generate(self) -> int:
        # Fast publishes are not in paho's table; never hand out one of their ids twice.
        for _ in range(65536):
            mid = super()._mid_generate()
            if mid not in self._fast_mids and mid not in self._out_messages:
                return mid
        raise LinkLostError("every MQTT message id is in flight")

    def _packet_queue(
        self,
        command: int,
        packet: bytes | bytearray,
        mid: int,
        qos: int,
        info: paho.MQTTMessageInfo | None = None,
    ) -> MQTTErrorCode:
        if threading.get_ident() != self._loop_thread:  # paho's CONNECT, from a thread
            return super()._packet_queue(command, packet, mid, qos, info)
        self._out_packet.append(
            {
                "command": command,
                "mid": mid,
                "qos": qos,
                "pos": 0,
                "to_process": len(packet),
                "packet": packet,
                "info": info,
            }
        )
        if not self._flush_due and not self._registered_write:
            self._flush_due = True
            self._session_loop.call_soon(self._flush)
        return _SUCCESS

    def _flush(self) -> None:
        self._flush_due = False
        if self._sock is None or self._registered_write or not self._out_packet:
            return
        try:
            self.loop_write()
        except Exception as err:  # as aiomqtt's writer callback: the link is broken
            self._owner.lose(err)

    def _packet_write(self) -> MQTTErrorCode:
        out = self._out_packet
        batch: list[bytes | bytearray] = []
        for packet in out:
            command = packet["command"] & 0xF0
            if command == _DISCONNECT or (command == PUBLISH and packet["qos"] == 0):
                break  # paho calls back after writing these
            data = packet["packet"]
            batch.append(data[packet["pos"] :] if packet["pos"] else data)
        if len(batch) < 2:
            return super()._packet_write()
        try:
            sent = self._sock_send(b"".join(batch))
        except (AttributeError, ValueError):
            return _SUCCESS
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError as err:
            self._easy_log(paho.MQTT_LOG_ERR, "failed to send on socket: %s", err)
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        for _ in range(len(batch)):
            packet = out[0]
            if sent < packet["to_process"]:
                packet["pos"] += sent
                packet["to_process"] -= sent
                break
            sent -= packet["to_process"]
            out.popleft()
        with self._msgtime_mutex:
            self._last_msg_out = paho.time_func()
        return super()._packet_write() if out and out[0]["pos"] == 0 else _SUCCESS

    # -- reading ---------------------------------------------------------------------

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read what the socket holds and handle every complete packet in it."""
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        if self._rx_sock is not self._sock:  # a new socket starts a new stream
            self._rx_sock = self._sock
            self._rx.clear()
        try:
            data = self._sock_recv(_READ_SIZE)
        except BlockingIOError:
            return _SUCCESS
        except OSError as err:
            self._easy_log(paho.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        if not data:
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        with self._msgtime_mutex:
            self._last_bytes_received = paho.time_func()
        buffer = self._rx
        buffer += data
        start, size = 0, len(buffer)
        rc = _SUCCESS
        while size - start >= 2:
            length, shift, index, complete = 0, 0, start + 1, False
            while index < size:
                byte = buffer[index]
                index += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    complete = True
                    break
                shift += 7
                if shift == 28:  # a Remaining Length has four bytes at most
                    rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
                    break
            if not complete:
                break  # malformed, or the length itself has not all arrived
            end = index + length
            if end > size:
                break
            rc = self._handle(buffer[start], buffer[index:end])
            start = end
            if rc or self._sock is None:
                break
        del buffer[:start]
        return self._loop_rc_handle(rc) if rc > 0 else _SUCCESS

    def _handle(self, header: int, body: bytearray) -> MQTTErrorCode:
        command = header & 0xF0
        try:
            if command == PUBACK and len(body) >= 2:
                kind = self._fast_mids.get((body[0] << 8) | body[1])
                if kind is not None:
                    return self._fast_ack(header, body, kind)
            elif command == PUBLISH and self._command_topics:
                message = decode_command(header, body, v5=self._v5)
                topic = None if message is None else self._command_topics.get(message.topic)
                if message is not None and topic is not None:
                    self._owner.command(topic, message)
                    return self._send_puback(message.mid) if message.qos else _SUCCESS
            self._in_packet = {
                "command": header,
                "have_remaining": 1,
                "remaining_count": [],
                "remaining_mult": 1,
                "remaining_length": len(body),
                "packet": body,
                "to_process": 0,
                "pos": 0,
            }
            return self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(paho.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            return MQTTErrorCode.MQTT_ERR_PROTOCOL

    def _fast_ack(self, header: int, body: bytearray, kind: bool) -> MQTTErrorCode:
        mid = (body[0] << 8) | body[1]
        code = puback_reason(body, v5=self._v5)
        if code is None:  # raises MalformedPacket as paho would
            code = _packet.decode_puback(header, body, self._protocol).reason.value
        del self._fast_mids[mid]
        if code >= 0x80:
            self._owner.refuse(ReasonCode(PacketTypes.PUBACK, identifier=code))
        elif kind is _EVENT:
            self._owner.event_acked(mid)
        return _SUCCESS


class SessionPaths:
    """The fast paths of one session, mixed into aiomqtt's client by :mod:`agent.mqtt`.

    :mod:`agent.mqtt` stays the only importer of aiomqtt: its ``SessionClient`` is
    ``SessionPaths`` plus ``aiomqtt.Client`` and calls :meth:`_speed_up` once built.
    """

    _client: paho.Client
    _disconnected: asyncio.Future[None]

    def _speed_up(
        self,
        *,
        event_content_types: tuple[str, str],
        event_acks: Callable[[int], object],
        commands: CommandHandler | None,
        command_topics: frozenset[str],
    ) -> None:
        """Switch the session's paho client to the fast paths.

        Args:
            event_content_types: the Content Type of a single event and of a drain batch
                (MQTT 5 only).
            event_acks: called with the message id of each event's successful PUBACK.
            commands: called for each PUBLISH on ``command_topics``, on the event loop.
            command_topics: the exact topics commands arrive on (the subscriptions).
        """
        self.refused = asyncio.Event()
        self.refusal: str | None = None
        self._event_acks = event_acks
        self._commands = commands
        self._client.__class__ = _PahoSession
        fast = cast(_PahoSession, self._client)
        fast._speed_up(self, command_topics if commands is not None else frozenset())
        self._fast = fast
        self._v5 = fast._v5
        self._event_props = (b"", b"")
        self._reply_head = b""
        if self._v5:
            single, batch = event_content_types
            self._event_props = (
                properties_block(string_property(CONTENT_TYPE, single)),
                properties_block(string_property(CONTENT_TYPE, batch)),
            )
            self._reply_head = string_property(CONTENT_TYPE, "application/json")

    def publish_event(self, topic: str, payload: bytes, *, batch: bool) -> int:
        """Queue an event (or a drain batch) at QoS 1; its PUBACK goes to ``event_acks``.

        Raises:
            LinkLostError: when not connected.
        """
        return self._fast.publish_fast(topic, payload, self._event_props[batch], _EVENT)

    def publish_reply(self, topic: str, payload: bytes, correlation: bytes | None) -> None:
        """Queue a command's reply at QoS 1 without waiting for its PUBACK.

        Raises:
            LinkLostError: when not connected.
            ValueError: when ``topic`` cannot be published to (a wildcard, empty).
        """
        props = b""
        if self._v5:
            extra = binary_property(CORRELATION_DATA, correlation) if correlation else b""
            props = properties_block(self._reply_head, extra)
        self._fast.publish_fast(topic, payload, props, _REPLY)

    # -- called by the paho session --------------------------------------------------

    def event_acked(self, mid: int) -> None:
        """An event's publish was acknowledged."""
        self._event_acks(mid)

    def refuse(self, reason: ReasonCode) -> None:
        """The broker refused a publish: end the session (see ``_watch_refusals``)."""
        self.refusal = str(reason).lower()
        self.refused.set()

    def command(self, topic: str, message: CommandPublish) -> None:
        """A command arrived on ``topic``."""
        if self._commands is None:
            return
        try:
            self._commands(self, topic, message)
        except Exception:  # a handler bug must not drop the link (it runs in the reader)
            log.exception("MQTT: handling a command on %s failed", topic)

    def lose(self, err: Exception) -> None:
        """Writing failed: the link is broken, as aiomqtt's writer callback says."""
        if not self._disconnected.done():
            self._disconnected.set_exception(err)
