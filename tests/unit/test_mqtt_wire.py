"""The agent's own MQTT packet code agrees with paho-mqtt's encoders and decoders.

:mod:`agent.mqtt_wire` stands in for paho on the hot paths; wherever it answers, the
answer must be paho's, and wherever it declines (``None``) paho decodes the packet as
before. Packets captured from a real Mosquitto are checked in
``tests/integration/test_mqtt_client.py``; here the shapes are built with paho's own
``Properties`` so that every property and size edge is covered.
"""

from __future__ import annotations

import struct
from importlib.metadata import version
from typing import Any

import pytest
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers

from agent.mqtt_wire import (
    CONTENT_TYPE,
    CORRELATION_DATA,
    CommandPublish,
    binary_property,
    decode_command,
    pack_length,
    properties_block,
    puback_reason,
    string_property,
)

V5 = MQTTProtocolVersion.MQTTv5
V311 = MQTTProtocolVersion.MQTTv311


def test_paho_is_the_version_whose_internals_the_session_client_overrides() -> None:
    # agent/mqtt_client.py overrides paho 2.2's private packet methods; pyproject pins it.
    assert version("paho-mqtt").startswith("2.2."), "recheck agent/mqtt_client.py first"


@pytest.mark.parametrize("length", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 268_435_455])
def test_lengths_are_encoded_as_paho_encodes_them(length: int) -> None:
    assert pack_length(length) == VariableByteIntegers.encode(length)  # type: ignore[no-untyped-call]


def test_a_length_mqtt_cannot_encode_is_refused() -> None:
    with pytest.raises(ValueError, match="268435456"):
        pack_length(268_435_456)


def test_packed_properties_equal_pahos() -> None:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = "application/json"
    props.CorrelationData = b"\x00\x01corr\xff"
    ours = properties_block(
        string_property(CONTENT_TYPE, "application/json"),
        binary_property(CORRELATION_DATA, b"\x00\x01corr\xff"),
    )
    assert ours == props.pack()  # type: ignore[no-untyped-call]
    assert properties_block() == b"\x00"


def assert_same_command(ours: CommandPublish, paho: Any) -> None:
    """``ours`` says what paho's decoding of the same PUBLISH (``decode_publish``) says."""
    assert (ours.topic, ours.qos, ours.mid, ours.payload) == (
        paho.topic,
        paho.qos,
        paho.mid,
        paho.payload,
    )
    assert ours.response_topic == getattr(paho.properties, "ResponseTopic", None)
    assert ours.correlation_data == getattr(paho.properties, "CorrelationData", None)


def _publish(
    topic: bytes, payload: bytes, *, qos: int = 1, mid: int = 7, props: Properties | None = None
) -> tuple[int, bytes]:
    body = struct.pack("!H", len(topic)) + topic
    if qos:
        body += struct.pack("!H", mid)
    if props is not None:
        body += props.pack()  # type: ignore[no-untyped-call]
    return 0x30 | (qos << 1), body + payload


def _props(**values: object) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(props, name, value)
    return props


COMMAND_SHAPES = {
    "no properties": _props(),
    "reply wanted": _props(
        ResponseTopic="nodemedic/v1/replies/ab12",
        CorrelationData=b"\x00" * 16,
        ContentType="application/json",
        MessageExpiryInterval=60,
    ),
    "payload format": _props(PayloadFormatIndicator=1, ResponseTopic="r/é/ü"),
    "user property": _props(UserProperty=("k", "v")),
    "topic alias": _props(TopicAlias=3),
    "long properties": _props(ResponseTopic="r/" + "x" * 200),
}


@pytest.mark.parametrize("shape", sorted(COMMAND_SHAPES))
@pytest.mark.parametrize("qos", [0, 1])
def test_a_command_decodes_as_paho_decodes_it_or_is_left_to_paho(shape: str, qos: int) -> None:
    header, body = _publish(
        b"nodemedic/v1/fleet/commands", b'{"signed":1}', qos=qos, props=COMMAND_SHAPES[shape]
    )
    paho = _packet.decode_publish(header, body, V5)
    ours = decode_command(header, body, v5=True)
    if shape in ("user property", "topic alias", "long properties"):
        assert ours is None  # paho reads these
        return
    assert ours is not None
    assert_same_command(ours, paho)


def test_a_311_command_has_no_properties_and_decodes_as_pahos() -> None:
    header, body = _publish(b"n/commands", b"payload", qos=1, mid=65535)
    paho = _packet.decode_publish(header, body, V311)
    ours = decode_command(header, body, v5=False)
    assert ours is not None
    assert (ours.topic, ours.mid, ours.payload) == (paho.topic, paho.mid, paho.payload)
    assert ours.response_topic is None


@pytest.mark.parametrize(
    "body",
    [
        b"",  # nothing
        b"\x00",  # half a topic length
        b"\x00\x09short",  # topic longer than the packet
        b"\x00\x01t\x00",  # half a message id
        b"\x00\x01t\x00\x01",  # no properties field
        b"\x00\x01t\x00\x01\x05\x08\x00\x09abc",  # a property past its field
        b"\x00\x01t\x00\x01\x06\x08\x00\x01\x00\x08\x00",  # a string with U+0000, repeated
        b"\x00\x01t\x00\x01\x04\x08\x00\x01\x00",  # a string with U+0000
        b"\x00\x01t\x00\x01\x05\x08\x00\x02\xc3\x28",  # invalid UTF-8
        b"\x00\x01t\x00\x01\x02\x63\x00",  # an unknown property
    ],
)
def test_malformed_commands_are_left_to_paho(body: bytes) -> None:
    # paho then rejects the packet (MalformedPacket ends the session) or reads it itself.
    assert decode_command(0x32, body, v5=True) is None


def test_qos_2_commands_are_left_to_paho() -> None:
    header, body = _publish(b"t", b"x", qos=2)
    assert decode_command(header, body, v5=True) is None


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\x05",  # success, the short form
        b"\x00\x05\x00",  # success, the reason code written out
        b"\x00\x05\x10\x00",  # no matching subscribers, empty properties
        b"\x00\x05\x87",  # not authorized
        b"\x00\x05\x97\x00",  # quota exceeded
        b"\x00\x05\x87\x05\x1f\x00\x02no",  # not authorized, with a reason string
        b"\x00\x05\x42",  # not a PUBACK reason code
        b"\x00",  # too short
    ],
)
def test_puback_reasons_match_pahos_or_are_left_to_paho(body: bytes) -> None:
    ours = puback_reason(body, v5=True)
    try:
        paho = _packet.decode_puback(0x40, body, V5).reason.value
    except MalformedPacket:
        assert ours is None
        return
    assert ours in (None, paho)
    if len(body) <= 3 or body[3] == 0:
        assert ours == paho


def test_a_311_puback_is_success_or_malformed_as_for_paho() -> None:
    assert puback_reason(b"\x12\x34", v5=False) == 0
    assert puback_reason(b"\x12\x34\x00", v5=False) is None
    with pytest.raises(MalformedPacket):
        _packet.decode_puback(0x40, b"\x12\x34\x00", V311)
