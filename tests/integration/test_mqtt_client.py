"""The session client's fast paths against a real Mosquitto: same packets, same outcomes.

:class:`agent.mqtt.SessionClient` reads PUBACKs and command PUBLISHes with
:mod:`agent.mqtt_wire` and writes events and replies itself. Every packet Mosquitto sends
it here is captured and read again by paho's own decoder: where the fast path answered,
the answers must agree (the check that fails if paho's internals or Mosquitto's packets
change). Around that: refusals by the broker's ACL, a burst larger than the socket
buffer, and commands split across reads or packed into one.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqtt import SessionClient
from agent.mqtt_client import SessionPaths, _PahoSession
from agent.mqtt_wire import CommandPublish, decode_command, puback_reason
from tests.brokers import (  # noqa: F401
    BrokerFactory,
    MosquittoBroker,
    mosquitto_factory_fixture,
    mqtt_pki_fixture,
)
from tests.unit.test_mqtt_wire import assert_same_command

pytestmark = [pytest.mark.mosquitto, pytest.mark.asyncio]

CONTENT_TYPES = ("application/cloudevents+json", "application/cloudevents-batch+json")
WAIT = 30.0  # seconds for anything to arrive on a loaded machine
USERS = {"node": "pw-node"}


class Node:
    """What the publisher gives a session client: acknowledged ids and received commands."""

    def __init__(self) -> None:
        self.acked: list[int] = []
        self.commands: list[tuple[str, CommandPublish]] = []

    def command(self, client: SessionPaths, topic: str, message: CommandPublish) -> None:
        self.commands.append((topic, message))
        if message.response_topic:
            client.publish_reply(message.response_topic, b'{"ok":true}', message.correlation_data)


@asynccontextmanager
async def _session(
    broker: MosquittoBroker,
    node: Node,
    *,
    v5: bool = True,
    topics: frozenset[str] = frozenset(),
    **login: Any,
) -> AsyncIterator[SessionClient]:
    client = SessionClient(
        broker.host,
        broker.port("password" if login else "anon"),
        identifier=f"node-{secrets.token_hex(4)}",
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        timeout=10,
        event_content_types=CONTENT_TYPES,
        event_acks=node.acked.append,
        commands=node.command,
        command_topics=topics,
        **login,
    )
    async with client:
        if topics:
            await client.subscribe([(topic, 1) for topic in sorted(topics)])
        yield client


async def _until(predicate: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(WAIT):
        while not predicate():  # noqa: ASYNC110 - polling state the client sets
            await asyncio.sleep(0.01)
    assert predicate(), what


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bytes]]:
    """Every packet a session client reads, as (first byte, rest after the length)."""
    packets: list[tuple[int, bytes]] = []
    handle = _PahoSession._handle

    def recording(self: _PahoSession, header: int, body: bytearray) -> Any:
        packets.append((header, bytes(body)))
        return handle(self, header, body)

    monkeypatch.setattr(_PahoSession, "_handle", recording)
    return packets


def _command_props(shape: str, reply_topic: str) -> Properties | None:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if shape == "reply":
        props.ResponseTopic = reply_topic
        props.CorrelationData = secrets.token_bytes(16)
        props.ContentType = "application/json"
        props.MessageExpiryInterval = 60
    elif shape == "user property":
        props.ResponseTopic = reply_topic
        props.UserProperty = ("trace", "1")
    else:
        return None
    return props


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
async def test_packets_captured_from_mosquitto_read_as_paho_reads_them(
    mosquitto_factory: BrokerFactory, captured: list[tuple[int, bytes]], v5: bool
) -> None:
    broker = mosquitto_factory(persistence=False)
    node = Node()
    commands, reply_topic = "p/nodes/n1/commands", f"p/replies/{secrets.token_hex(4)}"
    shapes = ["reply", "none", "user property"] if v5 else ["none"]
    payloads = [b'{"n":%d}' % i for i in range(60)] + [b"x" * 200_000]
    operator = aiomqtt.Client(
        broker.host,
        broker.port("anon"),
        identifier="operator",
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        timeout=10,
    )
    async with _session(broker, node, v5=v5, topics=frozenset({commands})) as client, operator:
        await operator.subscribe(reply_topic, qos=1)
        via_paho: list[bytes] = []  # what the fast path leaves to paho arrives as aiomqtt's

        async def read_the_rest() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                via_paho.append(message.payload)

        rest = asyncio.create_task(read_the_rest(), name="rest")
        mids = [
            client.publish_event(f"p/nodes/n1/events/e{i % 3}", b"{}", batch=i == 0)
            for i in range(40)
        ]
        for index, payload in enumerate(payloads):
            props = _command_props(shapes[index % len(shapes)], reply_topic) if v5 else None
            await operator.publish(commands, payload, qos=1, properties=props)
        await _until(
            lambda: len(node.commands) + len(via_paho) == len(payloads), "every command arrives"
        )
        await _until(lambda: sorted(node.acked) == sorted(mids), "every event is acknowledged")
        rest.cancel()
    fast_payloads = [message.payload for _, message in node.commands]
    assert fast_payloads == [p for p in payloads if p not in via_paho]  # order kept
    assert len(via_paho) == (len(payloads) // 3 if v5 else 0)  # the user properties
    assert {topic for topic, _ in node.commands} == {commands}
    protocol = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
    fast = 0
    for header, body in captured:
        if header & 0xF0 == 0x40:
            reason = puback_reason(body, v5=v5)
            paho_ack = _packet.decode_puback(header, body, protocol)
            assert reason in (None, paho_ack.reason.value)
            fast += reason is not None
        elif header & 0xF0 == 0x30:
            ours = decode_command(header, body, v5=v5)
            paho = _packet.decode_publish(header, body, protocol)
            if ours is None:
                assert v5
                assert hasattr(paho.properties, "UserProperty")
                continue
            fast += 1
            assert_same_command(ours, paho)
    assert fast >= 40 + len(payloads) * (2 / 3 if v5 else 1) - 1


async def test_what_the_acl_refuses_is_not_acknowledged_and_ends_the_session(
    mosquitto_factory: BrokerFactory, tmp_path: Path
) -> None:
    acl = tmp_path / "acl"
    acl.write_text("user node\ntopic write allowed/#\ntopic read #\n", encoding="utf-8")
    broker = mosquitto_factory(persistence=False, acl_file=acl, users=USERS)
    node = Node()
    async with _session(broker, node, username="node", password=USERS["node"]) as client:
        allowed = client.publish_event("allowed/events/a", b"{}", batch=False)
        await _until(lambda: node.acked == [allowed], "the allowed event is acknowledged")
        assert not client.refused.is_set()
        denied = client.publish_event("denied/events/a", b"{}", batch=False)
        await _until(client.refused.is_set, "the refusal is seen")
        assert client.refusal == "not authorized"
        assert denied not in node.acked
    node = Node()
    async with _session(broker, node, username="node", password=USERS["node"]) as client:
        with pytest.raises(ValueError, match="wildcards"):
            client.publish_reply("allowed/replies/+", b"{}", None)
        client.publish_reply("denied/replies/x", b"{}", b"corr")
        await _until(client.refused.is_set, "a refused reply is seen too")
        assert client.refusal == "not authorized"


async def test_a_burst_larger_than_the_socket_buffer_arrives_whole_and_in_order(
    mosquitto_factory: BrokerFactory,
) -> None:
    broker = mosquitto_factory(persistence=False, max_inflight_messages=0)
    node = Node()
    topic = "p/nodes/n1/events/big"
    count, size = 300, 24_000
    received: list[bytes] = []
    subscriber = aiomqtt.Client(
        broker.host,
        broker.port("anon"),
        identifier="subscriber",
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=10,
        max_queued_incoming_messages=0,
    )

    async def collect() -> None:
        async for message in subscriber.messages:
            assert isinstance(message.payload, bytes)
            assert message.properties is not None
            assert getattr(message.properties, "ContentType", None) == CONTENT_TYPES[0]
            received.append(message.payload[:8])
            if len(received) == count:
                return

    async with subscriber:
        await subscriber.subscribe(topic, qos=1)
        reader = asyncio.create_task(collect(), name="collect")
        async with _session(broker, node) as client:
            # One loop pass: 7 MB queued at once, far past what one send() takes.
            mids = [
                client.publish_event(topic, b"%08d" % i + b"x" * size, batch=False)
                for i in range(count)
            ]
            await _until(lambda: len(node.acked) == count, "every event is acknowledged")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, WAIT)
        reader.cancel()
    assert sorted(node.acked) == sorted(mids)
    assert received == [b"%08d" % i for i in range(count)]
