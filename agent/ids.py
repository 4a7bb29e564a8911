"""Event ids: ULID-style, time-ordered, unique within one store."""

from __future__ import annotations

__all__ = ["EventIds"]

import logging
import secrets
from typing import Final

logger = logging.getLogger(__name__)

_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_VALUE: Final = {char: index for index, char in enumerate(_CROCKFORD)}
_ID_LENGTH: Final = 26
_TIME_BITS: Final = 48
_RANDOM_BITS: Final = 80


# Two Crockford digits (10 bits) per lookup: 13 lookups make an id's 26 digits.
_DIGIT_PAIRS: Final = tuple(high + low for high in _CROCKFORD for low in _CROCKFORD)
_PAIR_SHIFTS: Final = tuple(range(10 * (_ID_LENGTH // 2 - 1), -1, -10))


def _encode_id(value: int) -> str:
    pairs = _DIGIT_PAIRS
    return "".join([pairs[(value >> shift) & 0x3FF] for shift in _PAIR_SHIFTS])


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
