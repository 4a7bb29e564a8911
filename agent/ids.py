"""Event ids: ULID-style, time-ordered, unique within one store."""

from __future__ import annotations

__all__ = ["EventIds"]

import base64
import logging
import secrets
from typing import Final

logger = logging.getLogger(__name__)

_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_VALUE: Final = {char: index for index, char in enumerate(_CROCKFORD)}
_ID_LENGTH: Final = 26
_TIME_BITS: Final = 48
_RANDOM_BITS: Final = 80


# RFC 4648 base32 digit -> Crockford digit (same 5-bit values, other letters).
_FROM_RFC4648: Final = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD.encode())


def _encode_id(value: int) -> str:
    # 20 bytes are 32 base32 digits; the last 26 hold the low 130 bits (the id's 128).
    digits = base64.b32encode(value.to_bytes(20, "big"))[32 - _ID_LENGTH :]
    return digits.translate(_FROM_RFC4648).decode("ascii")


def _decode_id(text: str) -> int:
    if len(text) != _ID_LENGTH:
        raise ValueError(f"not a {_ID_LENGTH}-character id: {text!r}")
    value = 0
    for char in text:
        value = (value << 5) | _CROCKFORD_VALUE[char]  # KeyError is a LookupError, see seed()
    return value


class EventIds:
    """ULID-style ids: 48-bit ms timestamp + 80 random bits, Crockford base32, 26 chars.

    Ids are strictly increasing: within one millisecond, or when the clock steps back,
    the random part counts up from the previous id instead of being drawn afresh.
    """

    def __init__(self) -> None:
        """Start with no previous id: the first id draws a fresh random part."""
        self._last_ms = -1
        self._last_random = 0

    def seed(self, last_id: str) -> None:
        """Continue after ``last_id`` so ids stay ordered across restarts."""
        try:
            value = _decode_id(last_id)
        except (ValueError, LookupError):
            logger.warning("ignoring malformed stored event id %r", last_id)
            return
        self._last_ms = value >> _RANDOM_BITS
        self._last_random = value & ((1 << _RANDOM_BITS) - 1)

    def next(self, ms: int) -> str:
        """The next id for an event created at ``ms`` (epoch milliseconds).

        Raises:
            ValueError: if ``ms`` does not fit the id's 48-bit timestamp.
        """
        if not 0 <= ms < 1 << _TIME_BITS:
            raise ValueError(f"event time {ms} ms is outside the id's 48-bit range")
        if ms > self._last_ms:
            self._last_ms, self._last_random = ms, secrets.randbits(_RANDOM_BITS)
        else:
            self._last_random += 1
            if self._last_random >> _RANDOM_BITS:  # 2**80 ids in one ms: borrow the next ms
                self._last_ms, self._last_random = self._last_ms + 1, 0
        return _encode_id((self._last_ms << _RANDOM_BITS) | self._last_random)
