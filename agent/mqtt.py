"""MQTT: publish every event and the node's state; the only module importing aiomqtt.

:class:`MqttPublisher` keeps one connection to the first broker of ``mqtt.url`` that
answers, failing over along the list. Each connection is a persistent session (clean
start off, session expiry from the config) with a new session id; its Last Will is the
retained ``{"state": "offline", "session": <id>, "reason": "connection lost", ...}`` on
``nodes/<node>/status``, and the retained birth message ``{"state": "online", "since": ...}``
with the same id follows the CONNACK.

Events are store-and-forward: the runtime queues each one in the SQLite outbox in the
transaction that records it; the publisher reads the outbox oldest first and publishes
at QoS 1 with up to ``mqtt.inflight`` messages awaiting their PUBACK at once; a row
leaves the outbox only on its PUBACK. When the link drops, the unacknowledged rows are
sent again on the next connection (at-least-once; consumers drop duplicates by ``id``).
The sending itself, and the optional drain batches on the ``batch`` topic
(``mqtt.drain_batch``), are :mod:`agent.mqtt_outbox`'s. Each session's client is
:class:`SessionClient`, aiomqtt's with :mod:`agent.mqtt_client`'s fast paths: it writes
events and command replies and reads their PUBACKs and the commands without paho's
per-packet objects (a command's reply is queued at once and its PUBACK not awaited; a
refusal still ends the session).

Reconnects back off exponentially with jitter; a refused login or a failed TLS
handshake is a misconfiguration, reported as such and retried at the slow
``mqtt.auth_retry`` pace instead.
"""

from __future__ import annotations

# Backoff, Topics and format_event_line live in modules without aiomqtt; re-exported here.
__all__ = [
    "SOCKET_OPTIONS",
    "Backoff",
    "EventOutbox",
    "MqttPublisher",
    "Topics",
    "format_event_line",
    "read_retained",
    "send_command",
    "tail_events",
]

import asyncio
import contextlib
import json
import logging
import random
import secrets
import socket
import ssl
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.backoff import Backoff
from agent.broker_url import BrokerUrl
from agent.commands import MAX_COMMAND_BYTES
from agent.config import MqttConfig
from agent.model import Condition, MqttLinkState, MqttStatus
from agent.mqtt_client import CommandHandler, SessionPaths
from agent.mqtt_outbox import DrainedError, EventOutbox, LinkLostError, OutboxSender
from agent.mqtt_wire import CommandPublish
from agent.remote import CommandReply, IncomingCommand
from agent.topics import Topics, format_event_line

log = logging.getLogger(__name__)

_CLOUDEVENTS_JSON: Final = "application/cloudevents+json"
_CLOUDEVENTS_BATCH_JSON: Final = "application/cloudevents-batch+json"
_AUTH_CODES: Final = frozenset(
    {4, 5, 0x86, 0x87, 0x8C}
)  # 3.1.1 rc 4/5; v5 bad login, not authorised, bad auth method
_TRANSIENT_CODES: Final = frozenset(
    {3, 0x88, 0x89, 0x97, 0x9F}
)  # server unavailable/busy, quota, rate
_STATE_TIMEOUT: Final = 5.0  # seconds for a retained status publish at connect or stop
# What the agent receives is commands: a flood must not grow its memory. The broker drops
# packets over the size announced at connect (MQTT 5 Maximum Packet Size; commands are
# read up to MAX_COMMAND_BYTES), and past this many waiting messages new ones are dropped
# (paho acknowledges on receipt, so a backlog would otherwise queue here without bound).
_MAX_INCOMING_PACKET: Final = MAX_COMMAND_BYTES + 4096
SOCKET_OPTIONS: Final = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
"""Every MQTT socket the agent and its CLI open: Nagle's algorithm off (paho leaves it on).

With it on, a small packet written while the previous one is unacknowledged (a command's
reply right after its PUBACK, the accepted event right after the reply) waits for the
broker's delayed ACK, 40 ms or more on Linux. One signed command's round trip to one node
measured 47 ms with it on and 8.7 ms with it off (``bench.command_cost``, the broker with
``set_tcp_nodelay true``)."""
_INCOMING_QUEUE: Final = 256


class _ConnectFailedError(Exception):
    """A connection attempt failed; ``kind`` is network, auth, tls or refused."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason

    @property
    def misconfigured(self) -> bool:
        return self.kind in ("auth", "tls", "refused")


class _RefusedError(Exception):
    """The broker answered a publish with a failure reason code (MQTT 5), e.g. its ACL."""


class _PahoLog(logging.Logger):
    """paho's log: remembers its last error (a TLS alert shows up only there), passes at debug."""

    def __init__(self) -> None:
        super().__init__("agent.mqtt.paho", logging.WARNING)
        self.last_error: str | None = None

    def handle(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.last_error = record.getMessage()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("paho: %s", record.getMessage())


class SessionClient(SessionPaths, aiomqtt.Client):
    """aiomqtt's client for one session, with :mod:`agent.mqtt_client`'s fast paths.

    Args:
        *args: aiomqtt's.
        event_content_types: as :meth:`SessionPaths._speed_up` takes them.
        event_acks: as there.
        commands: as there.
        command_topics: as there.
        **kwargs: aiomqtt's.
    """

    def __init__(
        self,
        *args: Any,
        event_content_types: tuple[str, str],
        event_acks: Callable[[int], object],
        commands: CommandHandler | None = None,
        command_topics: frozenset[str] = frozenset(),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._speed_up(
            event_content_types=event_content_types,
            event_acks=event_acks,
            commands=commands,
            command_topics=command_topics,
        )

    def _on_publish(
        self,
        client: Any,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        # paho's path (status, conditions): aiomqtt takes every PUBACK as success.
        if isinstance(reason_code, ReasonCode) and reason_code.is_failure:
            self.refuse(reason_code)
            return
        super()._on_publish(client, userdata, mid, reason_code, properties)


class MqttPublisher:
    """Publishes the outbox, the node's status and its conditions to the broker.

    Args:
        config: the ``mqtt`` section (must have at least one url).
        node: the node's name: the client id and the topics' node level.
        version: the agent's version, in the birth message.
        outbox: where queued events are read and acknowledged.
        conditions: the node's current conditions, for the retained snapshot.
        commands: handles remote commands; when set, the node subscribes to its command
            topic, the fleet command topic and the retained fleet pause, and publishes
            each reply to the command's MQTT 5 response topic.
        rng: randomness for the backoff jitter.
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        node: str,
        version: str,
        outbox: EventOutbox,
        conditions: Callable[[], Sequence[Condition]],
        commands: Callable[[IncomingCommand], CommandReply | None] | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not config.enabled:
            raise ValueError("mqtt.url is not set: nothing to publish to")
        self._config = config
        self._node = node
        self._version = version
        self._outbox = outbox
        self._conditions = conditions
        self._commands = commands
        self._topics = Topics(config.topic_prefix, node)
        self._brokers = config.brokers
        self._backoff = Backoff(
            initial=config.reconnect_min.total_seconds(),
            maximum=config.reconnect_max.total_seconds(),
            rng=rng,
        )
        self._window = config.inflight
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._conditions_dirty = True
        self._task: asyncio.Task[None] | None = None
        self._state = MqttLinkState.CONNECTING
        self._broker: BrokerUrl = self._brokers[0]
        self._reason: str | None = None
        self._session: str | None = None
        self._attempts = 0
        self._connected_at: float | None = None
        self._publishes: Counter[str] = Counter()
        self._failures: Counter[str] = Counter()
        self._v5 = config.protocol == "5"
        # A PUBACK slower than this means a dead link that keepalive has not noticed yet.
        self._publish_timeout = (
            2 * config.keepalive.total_seconds() + config.connect_timeout.total_seconds()
        )
        self._sender = OutboxSender(
            outbox,
            self._topics,
            window=self._window,
            publish_timeout=self._publish_timeout,
            drain_batch=config.drain_batch,
            publishes=self._publishes,
        )

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start publishing in a background task."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="mqtt")

    async def aclose(self, grace: float) -> None:
        """Stop: publish what is queued within ``grace`` seconds, say offline, disconnect.

        Events not acknowledged by then stay in the outbox for the next start.
        """
        self._closing.set()
        self._wake.set()
        self._sender.stop()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=grace)
        except TimeoutError:
            log.warning("MQTT: not everything was published within %.1fs; the rest waits", grace)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=0.5)
        except Exception:
            log.exception("MQTT publisher failed while stopping")
        finally:
            self._sender.flush_acks()
            self._set_state(MqttLinkState.STOPPED, None)

    def notify_events(self) -> None:
        """New events are in the outbox."""
        self._sender.notify()

    def notify_conditions(self) -> None:
        """The conditions changed: publish a new retained snapshot."""
        self._conditions_dirty = True
        self._wake.set()

    def status(self) -> MqttStatus:
        """The link's state and counters (outbox figures are the runtime's to add)."""
        return MqttStatus(
            state=self._state,
            broker=str(self._broker),
            reason=self._reason,
            session=self._session if self._state is MqttLinkState.CONNECTED else None,
            reconnects=max(0, self._attempts - 1),
            publishes=dict(self._publishes),
            connect_failures=dict(self._failures),
        )

    # -- the connection loop ---------------------------------------------------------

    async def _run(self) -> None:
        index = 0
        round_failures: list[_ConnectFailedError] = []
        while not self._closing.is_set():
            broker = self._brokers[index]
            self._broker = broker
            try:
                await self._connect_and_serve(broker)
            except _ConnectFailedError as failure:
                self._failures[failure.kind] += 1
                round_failures.append(failure)
                state = (
                    MqttLinkState.MISCONFIGURED
                    if failure.misconfigured
                    else MqttLinkState.DISCONNECTED
                )
                self._set_state(state, failure.reason)
            except _RefusedError as refused:
                self._publishes["refused"] += 1
                round_failures.append(_ConnectFailedError("refused", str(refused)))
                self._set_state(MqttLinkState.MISCONFIGURED, str(refused))
            except LinkLostError as lost:
                round_failures.clear()
                # Only a connection that held for a while restarts the backoff: a broker
                # that accepts and then drops us (or a second agent with our client id
                # taking the session over) must not be reconnected to in a tight loop.
                held = asyncio.get_running_loop().time() - (self._connected_at or 0.0)
                if held >= self._config.reconnect_max.total_seconds():
                    self._backoff.reset()
                self._set_state(
                    MqttLinkState.DISCONNECTED, f"lost the connection to {broker}: {lost}"
                )
            except Exception as err:  # a bug must not end publishing for good
                log.exception("MQTT publisher failed unexpectedly; reconnecting")
                self._set_state(MqttLinkState.DISCONNECTED, f"internal error: {err}")
            else:
                return  # only a stop ends a session without an exception
            finally:
                self._sender.flush_acks()
            index = (index + 1) % len(self._brokers)
            if index != 0 and round_failures:
                continue  # fail over to the next broker at once
            if any(f.misconfigured for f in round_failures):
                delay = self._config.auth_retry.total_seconds()
            else:
                delay = self._backoff.next()
            round_failures.clear()
            log.debug("MQTT: next connection attempt in %.2fs", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), timeout=delay)

    async def _connect_and_serve(self, broker: BrokerUrl) -> None:
        session = secrets.token_hex(8)
        paho_log = _PahoLog()
        self._attempts += 1
        client = await self._client(broker, session, paho_log)
        connected = False
        try:
            async with client:
                connected = True
                self._session = session
                self._connected_at = asyncio.get_running_loop().time()
                await self._publish_state(
                    client, _status_payload("online", session, self._version, since=_now())
                )
                self._set_state(MqttLinkState.CONNECTED, None)
                self._conditions_dirty = True
                if self._commands is not None:
                    await self._subscribe_commands(client)
                try:
                    await self._serve(client)
                except DrainedError:
                    await self._publish_state(
                        client,
                        _status_payload("offline", session, None, since=_now(), reason="stopped"),
                    )
        except aiomqtt.MqttError as err:
            if not connected:
                raise _classify(err, paho_log.last_error, broker) from err
            raise LinkLostError(str(err)) from err

    async def _client(self, broker: BrokerUrl, session: str, paho_log: _PahoLog) -> SessionClient:
        config = self._config
        tls_context: ssl.SSLContext | None = None
        if broker.tls:
            try:
                tls_context = await asyncio.to_thread(_tls_context, config)
            except (OSError, ssl.SSLError) as err:
                raise _ConnectFailedError(
                    "tls", f"cannot set up TLS for {broker}: {err}; check mqtt.tls"
                ) from err
        properties: Properties | None = None
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = int(config.session_expiry.total_seconds())
            properties.MaximumPacketSize = _MAX_INCOMING_PACKET
        password = config.password.get_secret_value() if config.password is not None else None
        client = SessionClient(
            broker.host,
            broker.port,
            event_content_types=(_CLOUDEVENTS_JSON, _CLOUDEVENTS_BATCH_JSON),
            event_acks=self._sender.acknowledged,
            commands=self._on_command if self._commands is not None else None,
            command_topics=frozenset(
                (self._topics.commands, self._topics.fleet_commands, self._topics.fleet_pause)
            ),
            identifier=self._node,
            username=config.username,
            password=password,
            protocol=aiomqtt.ProtocolVersion.V5 if self._v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if self._v5 else False,
            # paho insists on its default when the protocol has no clean start (3.1.1).
            clean_start=False if self._v5 else MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
            will=aiomqtt.Will(
                self._topics.status,
                # Written now, published by the broker whenever the link dies: it can say
                # when the session began, not when it ended.
                _status_payload(
                    "offline", session, None, reason="connection lost", session_started=_now()
                ),
                qos=1,
                retain=True,
            ),
            keepalive=int(config.keepalive.total_seconds()),
            timeout=config.connect_timeout.total_seconds(),
            socket_options=SOCKET_OPTIONS,
            max_inflight_messages=self._window + 2,
            max_queued_incoming_messages=_INCOMING_QUEUE,
            tls_context=tls_context,
            tls_insecure=(not config.tls.check_hostname) if broker.tls else None,
            logger=paho_log,
        )
        client.pending_calls_threshold = self._window + 4
        return client

    # -- one session -----------------------------------------------------------------

    async def _publish_state(self, client: SessionClient, payload: bytes) -> None:
        """Publish a retained status message, or raise _RefusedError if the broker refuses."""
        publish = asyncio.ensure_future(
            client.publish(self._topics.status, payload, qos=1, retain=True, timeout=_STATE_TIMEOUT)
        )
        refused = asyncio.ensure_future(client.refused.wait())
        try:
            await asyncio.wait({publish, refused}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in (publish, refused):
                future.cancel()
        if not publish.cancelled() and publish.done():
            publish.result()
            return
        raise self._refused_error(client, self._topics.status)

    def _refused_error(self, client: SessionClient, topic: str) -> _RefusedError:
        return _RefusedError(
            f"broker {self._broker} refused a publish on {topic} ({client.refusal}); check "
            f"that its ACL lets this node publish to {self._topics.prefix}/nodes/"
            f"{self._node}/#"
        )

    async def _serve(self, client: SessionClient) -> None:
        """Publish until the link drops (LinkLostError) or a stop drained it (DrainedError)."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._watch(client), name="mqtt-watch")
                group.create_task(self._watch_refusals(client), name="mqtt-refusals")
                group.create_task(
                    self._publish_conditions_when_dirty(client, group), name="mqtt-conditions"
                )
                group.create_task(
                    self._sender.serve(client),
                    name="mqtt-outbox",
                )
        except ExceptionGroup as errors:
            # One session ends for one reason; a lost link outranks a finished drain.
            for kind in (_RefusedError, LinkLostError, DrainedError):
                found = errors.subgroup(kind)
                if found is not None:
                    raise _leaf(found) from None
            raise

    async def _subscribe_commands(self, client: aiomqtt.Client) -> None:
        topics = self._topics
        filters = [(topics.commands, 1), (topics.fleet_commands, 1), (topics.fleet_pause, 1)]
        granted: Sequence[int | ReasonCode] = await client.subscribe(
            filters, timeout=_STATE_TIMEOUT
        )
        refused = [
            topic
            for (topic, _), code in zip(filters, granted, strict=False)
            if _subscribe_failed(code)
        ]
        if refused:
            # Publishing still works; commands on these topics will not reach this node.
            log.error(
                "MQTT: broker %s refused the subscription to %s; check its ACL",
                self._broker,
                ", ".join(refused),
            )

    def _on_message(self, client: SessionClient, message: aiomqtt.Message) -> None:
        # What paho decoded itself (a command with properties the fast path leaves to it).
        if self._commands is None:
            log.debug("MQTT: ignoring a message on %s", message.topic)
            return
        payload = message.payload
        props = message.properties
        self._on_command(
            client,
            message.topic.value,
            CommandPublish(
                topic=message.topic.value.encode(),
                qos=message.qos,
                mid=message.mid,
                payload=payload if isinstance(payload, bytes) else str(payload).encode(),
                response_topic=getattr(props, "ResponseTopic", None),
                correlation_data=getattr(props, "CorrelationData", None),
            ),
        )

    def _on_command(self, client: SessionPaths, topic: str, message: CommandPublish) -> None:
        if self._commands is None:
            return
        response_topic = message.response_topic
        correlation = message.correlation_data
        # The subscriptions are these exact topics (no wildcards), so equality is the
        # match, without aiomqtt's level-by-level wildcard matcher on every command.
        incoming = IncomingCommand(
            payload=message.payload,
            via=f"mqtt:{topic}",
            retained=topic == self._topics.fleet_pause,
            fleet=topic == self._topics.fleet_commands,
            response_topic=response_topic,
            correlation_data=correlation,
        )
        try:
            reply = self._commands(incoming)
        except Exception:  # a handler bug must not drop the link
            log.exception("MQTT: handling a command on %s failed", topic)
            return
        if reply is None or not response_topic:
            return
        try:
            # Queued now; its PUBACK is not awaited (a refusal still ends the session).
            client.publish_reply(response_topic, reply.to_json(), correlation)
        except (LinkLostError, ValueError) as err:
            # The outcome is also an event in the outbox; a lost reply loses no record.
            log.warning("MQTT: cannot publish a command reply to %s: %s", response_topic, err)

    async def _watch(self, client: SessionClient) -> None:
        # The message iterator is how aiomqtt reports a dropped connection.
        try:
            async for message in client.messages:
                self._on_message(client, message)
        except aiomqtt.MqttError as err:
            raise LinkLostError(str(err.__cause__ or err)) from err
        raise LinkLostError("the connection ended")

    async def _watch_refusals(self, client: SessionClient) -> None:
        await client.refused.wait()
        raise self._refused_error(client, f"{self._topics.prefix}/nodes/{self._node}/...")

    async def _publish_conditions_when_dirty(
        self, client: aiomqtt.Client, group: asyncio.TaskGroup
    ) -> None:
        while True:
            self._wake.clear()
            if self._conditions_dirty:
                self._conditions_dirty = False
                group.create_task(self._publish_conditions(client), name="mqtt-conditions")
            await self._wake.wait()

    async def _publish_conditions(self, client: aiomqtt.Client) -> None:
        conditions = self._conditions()
        payload = {
            "node": self._node,
            "firing": sum(1 for c in conditions if c.state.value == "firing"),
            "time": _now(),
            "conditions": [condition.to_json() for condition in conditions],
        }
        try:
            await client.publish(
                self._topics.conditions,
                json.dumps(payload, separators=(",", ":"), allow_nan=False, default=str),
                qos=1,
                retain=True,
                timeout=self._publish_timeout,
            )
        except aiomqtt.MqttError as err:
            self._conditions_dirty = True
            raise LinkLostError(f"the conditions snapshot was not acknowledged: {err}") from err
        except ValueError:
            log.exception("cannot encode the conditions snapshot")

    def _set_state(self, state: MqttLinkState, reason: str | None) -> None:
        before, before_reason = self._state, self._reason
        self._state, self._reason = state, reason
        if state is before and reason == before_reason:
            return
        if state is MqttLinkState.CONNECTED:
            log.info("MQTT: connected to %s (session %s)", self._broker, self._session)
        elif state is MqttLinkState.MISCONFIGURED:
            log.error(
                "MQTT: %s; retrying every %gs", reason, self._config.auth_retry.total_seconds()
            )
        elif state is MqttLinkState.DISCONNECTED and before is not MqttLinkState.DISCONNECTED:
            log.warning("MQTT: %s; events wait in the outbox", reason)
        elif state is MqttLinkState.STOPPED:
            log.info("MQTT: stopped")
        else:
            log.debug("MQTT: %s: %s", state.value, reason)


def _subscribe_failed(code: int | ReasonCode) -> bool:
    # MQTT 5 answers with reason codes, 3.1.1 with granted QoS numbers; 0x80+ is a refusal.
    value = code.value if isinstance(code, ReasonCode) else code
    return value >= 0x80


def _leaf(group: BaseExceptionGroup[Exception]) -> Exception:
    first = group.exceptions[0]
    return _leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _status_payload(state: str, session: str, version: str | None, **times: str) -> bytes:
    """A retained status message.

    ``since`` (birth and clean stop), ``reason`` (``stopped``, ``connection lost``) and
    ``session_started`` (the will) tell ``nodemedic fleet`` when and why a node went online
    or offline.
    """
    payload: dict[str, str] = {"state": state, "session": session}
    if version is not None:
        payload["version"] = version
    payload.update(times)
    return json.dumps(payload, separators=(",", ":")).encode()


def _now() -> str:
    """The current time as RFC 3339 UTC, as events carry it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _tls_context(config: MqttConfig) -> ssl.SSLContext:
    tls = config.tls
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    context.check_hostname = tls.check_hostname
    if tls.cert_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


def _classify_connack(err: MqttConnectError, broker: BrokerUrl) -> _ConnectFailedError:
    rc = err.rc
    code = rc.value if isinstance(rc, ReasonCode) else rc
    text = (str(rc) if isinstance(rc, ReasonCode) else str(err).split(": ", 1)[-1]).lower()
    if code in _AUTH_CODES:
        return _ConnectFailedError(
            "auth",
            f"broker {broker} refused the credentials ({text}); check mqtt.username "
            "and mqtt.password",
        )
    if code in _TRANSIENT_CODES:
        return _ConnectFailedError("network", f"broker {broker} is unavailable ({text})")
    return _ConnectFailedError("refused", f"broker {broker} refused the connection ({text})")


def _classify(
    err: aiomqtt.MqttError, paho_error: str | None, broker: BrokerUrl
) -> _ConnectFailedError:
    """What a failed connection attempt means: a refused login, a TLS problem, or no route."""
    if isinstance(err, MqttConnectError):
        return _classify_connack(err, broker)
    cause = err.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return _ConnectFailedError(
            "tls",
            f"TLS with {broker} failed: the broker's certificate is not trusted "
            f"({cause.verify_message}); check mqtt.tls.ca_file and check_hostname",
        )
    if isinstance(cause, ssl.SSLError):
        return _ConnectFailedError("tls", f"TLS with {broker} failed: {cause}; check mqtt.tls")
    if paho_error is not None and ("SSL" in paho_error or "alert" in paho_error):
        detail = paho_error.removeprefix("failed to receive on socket: ")
        return _ConnectFailedError(
            "tls",
            f"broker {broker} rejected the TLS handshake ({detail}); check "
            "mqtt.tls.cert_file and key_file",
        )
    return _ConnectFailedError("network", f"cannot reach {broker}: {err}")


# -- events tail ----------------------------------------------------------------------


def _oneshot_client(
    config: MqttConfig, broker: BrokerUrl, role: str, paho_log: _PahoLog
) -> aiomqtt.Client:
    """A short-lived client for the CLI (tail, trigger), with a random client id."""
    password = config.password.get_secret_value() if config.password is not None else None
    return aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=f"nodemedic-{role}-{secrets.token_hex(4)}",
        username=config.username,
        password=password,
        protocol=aiomqtt.ProtocolVersion.V5
        if config.protocol == "5"
        else aiomqtt.ProtocolVersion.V311,
        keepalive=int(config.keepalive.total_seconds()),
        timeout=config.connect_timeout.total_seconds(),
        socket_options=SOCKET_OPTIONS,
        tls_context=_tls_context(config) if broker.tls else None,
        tls_insecure=(not config.tls.check_hostname) if broker.tls else None,
        logger=paho_log,
    )


async def tail_events(
    config: MqttConfig,
    *,
    node: str | None,
    event_type: str | None,
) -> AsyncGenerator[dict[str, Any]]:
    """Subscribe to live events and yield each decoded CloudEvent.

    ``event_type`` is an exact type or a prefix ending in ``*`` or ``.``; prefixes are
    filtered here since MQTT wildcards match whole topic levels only. Drain batches (the
    ``batch`` topic) are subscribed to as well and yield their events one by one.

    Raises:
        ConnectionError: when no broker of ``config`` accepts the connection.
    """
    exact = event_type if event_type and not event_type.endswith(("*", ".")) else None
    prefix = event_type.removesuffix("*") if event_type and exact is None else None
    filters = [
        (Topics.event_filter(config.topic_prefix, node, exact), 1),
        (Topics.batch_filter(config.topic_prefix, node), 1),
    ]
    failures: list[str] = []
    for broker in config.brokers:
        paho_log = _PahoLog()
        client = _oneshot_client(config, broker, "tail", paho_log)
        try:
            async with client:
                await client.subscribe(filters)
                async for message in client.messages:
                    for event in _events_of(message.payload):
                        kind = str(event.get("type", ""))
                        if (exact is not None and kind != exact) or (
                            prefix is not None and not kind.startswith(prefix)
                        ):
                            continue
                        yield event
                return
        except aiomqtt.MqttError as err:
            failures.append(_classify(err, paho_log.last_error, broker).reason)
    raise ConnectionError("; ".join(failures) or "no broker configured")


async def send_command(
    config: MqttConfig,
    *,
    topic: str,
    payload: bytes,
    expiry: int,
    retain: bool = False,
    wait: float = 0.0,
) -> AsyncGenerator[dict[str, Any]]:
    """Publish a signed command and yield the replies that arrive within ``wait`` seconds.

    The command carries a fresh response topic and correlation data (MQTT 5) and a
    message expiry of ``expiry`` seconds, so a broker never delivers it late.

    Raises:
        ConnectionError: when no broker accepts the connection or the publish.
        ValueError: when the configuration speaks MQTT 3.1.1, which has no replies.
    """
    if config.protocol != "5":
        raise ValueError("remote commands need MQTT 5 (mqtt.protocol: 5) for expiry and replies")
    correlation = secrets.token_bytes(16)
    reply_topic = f"{config.topic_prefix}/replies/{secrets.token_hex(8)}"
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.MessageExpiryInterval = max(1, expiry)
    props.ContentType = "application/json"
    if not retain:
        props.ResponseTopic = reply_topic
        props.CorrelationData = correlation
    failures: list[str] = []
    for broker in config.brokers:
        paho_log = _PahoLog()
        client = _oneshot_client(config, broker, "trigger", paho_log)
        try:
            async with client:
                if wait > 0 and not retain:
                    await client.subscribe(reply_topic, qos=1)
                await client.publish(topic, payload, qos=1, retain=retain, properties=props)
                if wait <= 0 or retain:
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        async for message in client.messages:
                            message_props = message.properties
                            if getattr(message_props, "CorrelationData", None) != correlation:
                                continue
                            reply = _json_object(message.payload)
                            if reply is not None:
                                yield reply
                return
        except aiomqtt.MqttError as err:
            failures.append(_classify(err, paho_log.last_error, broker).reason)
    raise ConnectionError("; ".join(failures) or "no broker configured")


def _events_of(payload: object) -> list[dict[str, Any]]:
    """The CloudEvents in a message: one structured event, or a batch (a JSON array)."""
    if not isinstance(payload, bytes | bytearray):
        return []
    try:
        value = json.loads(payload)
    except ValueError:
        return []
    items = value if isinstance(value, list) else [value]
    return [item for item in items if isinstance(item, dict)]


def _json_object(payload: object) -> dict[str, Any] | None:
    if not isinstance(payload, bytes | bytearray):
        return None
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# -- nodemedic fleet ------------------------------------------------------------------


async def read_retained(
    config: MqttConfig, filters: Sequence[str], *, quiet: float, limit: float
) -> tuple[list[tuple[str, bytes]], bool]:
    """Subscribe to ``filters`` and collect the retained messages (and any live ones).

    Collecting stops once no message arrived for ``quiet`` seconds (the broker has sent
    what it retains) or ``limit`` seconds after the subscription, whichever is first.

    Returns:
        (topic, payload) pairs in arrival order, empty payloads (cleared topics) left out,
        and whether collecting ended quietly rather than at the limit.

    Raises:
        ConnectionError: when no broker accepts the connection, or the subscription is
            refused (the broker's ACL).
    """
    failures: list[str] = []
    for broker in config.brokers:
        paho_log = _PahoLog()
        client = _oneshot_client(config, broker, "fleet", paho_log)
        try:
            async with client:
                granted: Sequence[int | ReasonCode] = await client.subscribe(
                    [(topic, 1) for topic in filters]
                )
                refused = [
                    t for t, code in zip(filters, granted, strict=False) if _subscribe_failed(code)
                ]
                if refused:
                    raise ConnectionError(
                        f"broker {broker} refused the subscription to {', '.join(refused)}; "
                        "check that its ACL lets this user read them"
                    )
                return await _collect(client, quiet=quiet, limit=limit)
        except aiomqtt.MqttError as err:
            failures.append(_classify(err, paho_log.last_error, broker).reason)
    raise ConnectionError("; ".join(failures) or "no broker configured")


async def _collect(
    client: aiomqtt.Client, *, quiet: float, limit: float
) -> tuple[list[tuple[str, bytes]], bool]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    quiet_at = loop.time() + quiet
    messages: list[tuple[str, bytes]] = []
    incoming = aiter(client.messages)
    while loop.time() < deadline:
        try:
            async with asyncio.timeout_at(min(quiet_at, deadline)):
                message = await anext(incoming)
        except TimeoutError:
            return messages, quiet_at <= deadline
        if message.retain:
            # Live updates keep coming on a busy fleet; only the retained burst must end.
            quiet_at = loop.time() + quiet
        payload = message.payload
        raw = payload if isinstance(payload, bytes) else str(payload or "").encode()
        if raw:
            messages.append((message.topic.value, raw))
    return messages, False
