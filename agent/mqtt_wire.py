"""MQTT packet bytes for the agent's hot paths, without paho's per-packet objects.

paho-mqtt builds a ``Properties`` object (tables of every property name, rebuilt per
object) and a ``ReasonCode`` for each PUBACK it reads, and a ``Properties`` plus an
``MQTTMessage`` for each PUBLISH it reads or writes; on the agent's paths that is most
of the CPU an event or a fleet command costs. The functions here read and write the
few packet shapes those paths see, exactly as MQTT 3.1.1 and 5 define them, and answer
``None`` for anything else, which :mod:`agent.mqtt_client` then hands to paho's own
code. ``tests/unit/test_mqtt_wire.py`` checks them against paho's encoders and decoders
on packets captured from Mosquitto.
"""

from __future__ import annotations

__all__ = [
    "PUBACK",
    "PUBLISH",
    "CommandPublish",
    "binary_property",
    "decode_command",
    "pack_length",
    "properties_block",
    "puback_reason",
    "string_property",
]

import struct
from typing import Final, NamedTuple

PUBLISH: Final = 0x30
PUBACK: Final = 0x40
CONTENT_TYPE: Final = 0x03
RESPONSE_TOPIC: Final = 0x08
CORRELATION_DATA: Final = 0x09
# Payload Format Indicator (one byte) and Message Expiry Interval (four): skipped.
_FIXED_SIZE: Final = {0x01: 1, 0x02: 4}
_MAX_LENGTH: Final = 268_435_455  # the largest Remaining Length MQTT can encode
# The reason codes MQTT 5 allows in a PUBACK (section 3.4.2.1); any other is malformed.
_PUBACK_CODES: Final = frozenset({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99})
_UINT16: Final = struct.Struct("!H")


class CommandPublish(NamedTuple):
    """A received PUBLISH, as the command handler needs it."""

    topic: bytes
    qos: int
    mid: int
    payload: bytes
    response_topic: str | None
    correlation_data: bytes | None


def pack_length(length: int) -> bytes:
    """A Remaining Length (or any Variable Byte Integer).

    Raises:
        ValueError: when ``length`` is negative or too large for MQTT.
    """
    if not 0 <= length <= _MAX_LENGTH:
        raise ValueError(f"MQTT cannot encode a length of {length}")
    if length < 0x80:
        return bytes((length,))
    encoded = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        if length:
            encoded.append(byte | 0x80)
        else:
            encoded.append(byte)
            return bytes(encoded)


def string_property(identifier: int, value: str) -> bytes:
    """One UTF-8 string property (e.g. Content Type), identifier and value."""
    data = value.encode()
    return bytes((identifier,)) + _UINT16.pack(len(data)) + data


def binary_property(identifier: int, value: bytes) -> bytes:
    """One binary data property (e.g. Correlation Data), identifier and value."""
    return bytes((identifier,)) + _UINT16.pack(len(value)) + value


def properties_block(*properties: bytes) -> bytes:
    """An MQTT 5 properties field: its length, then the properties."""
    body = b"".join(properties)
    return pack_length(len(body)) + body


def puback_reason(body: bytes | bytearray, *, v5: bool) -> int | None:
    """A PUBACK's reason code (0 is success), or None when paho must decode it.

    ``body`` is everything after the fixed header, starting with the message id.
    None means a shape beyond the common ones (properties present, a malformed size or
    code): paho's decoder reads it, or rejects it as a malformed packet.
    """
    size = len(body)
    if size == 2:
        return 0
    if not v5 or size > 4 or size < 3 or (size == 4 and body[3] != 0):
        return None
    code = body[2]
    return code if code in _PUBACK_CODES else None


def decode_command(header: int, body: bytes | bytearray, *, v5: bool) -> CommandPublish | None:
    """A received QoS 0 or 1 PUBLISH, or None when paho must decode it.

    Reads the properties a command carries (Payload Format Indicator, Message Expiry
    Interval, Content Type, Response Topic, Correlation Data), each at most once; any
    other property, a QoS 2 message, or a malformed packet answers None.
    """
    qos = (header >> 1) & 0x03
    end = len(body)
    if qos > 1 or end < 2:
        return None
    topic_end = 2 + ((body[0] << 8) | body[1])
    position = topic_end + 2 if qos else topic_end
    if position > end or topic_end == 2:
        return None
    mid = (body[topic_end] << 8) | body[topic_end + 1] if qos else 0
    response_topic: str | None = None
    correlation: bytes | None = None
    if v5:
        # One length byte: a command's properties are well under 128 bytes; longer
        # ones are paho's to read.
        if position >= end or body[position] & 0x80:
            return None
        props_end = position + 1 + body[position]
        if props_end > end:
            return None
        values = _properties(body, position + 1, props_end)
        if values is None:
            return None
        response_topic, correlation = values
        position = props_end
    return CommandPublish(
        bytes(body[2:topic_end]), qos, mid, bytes(body[position:]), response_topic, correlation
    )


def _properties(
    body: bytes | bytearray, position: int, end: int
) -> tuple[str | None, bytes | None] | None:
    """The Response Topic and Correlation Data of a PUBLISH's properties, or None."""
    found: dict[int, bytes] = {}
    while position < end:
        identifier = body[position]
        position += 1
        if identifier in found:
            return None
        if identifier in _FIXED_SIZE:
            found[identifier] = b""
            position += _FIXED_SIZE[identifier]
            continue
        if identifier not in (CONTENT_TYPE, RESPONSE_TOPIC, CORRELATION_DATA) or position + 2 > end:
            return None
        value_end = position + 2 + ((body[position] << 8) | body[position + 1])
        if value_end > end:
            return None
        found[identifier] = value = bytes(body[position + 2 : value_end])
        position = value_end
        if identifier != CORRELATION_DATA and _mqtt_string(value) is None:
            return None
    if position != end:
        return None
    topic = found.get(RESPONSE_TOPIC)
    return (None if topic is None else topic.decode()), found.get(CORRELATION_DATA)


def _mqtt_string(data: bytes) -> str | None:
    """A UTF-8 string as MQTT allows it (no U+0000, no U+FEFF), or None."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    if "\x00" in text or "\ufeff" in text:
        return None
    return text
