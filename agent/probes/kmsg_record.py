"""The ``/dev/kmsg`` record format: ``prio,seq,ts,flags;message`` plus dictionary lines.

Each ``read(2)`` of ``/dev/kmsg`` returns one record (Documentation/ABI/testing/dev-kmsg)::

    6,1234,5678901,-;EXT4-fs (sda1): mounted filesystem with ordered data mode.
     SUBSYSTEM=block
     DEVICE=b8:1

The header holds the syslog priority (facility * 8 + level), a 64-bit sequence number,
the time since boot in microseconds and flags (``-`` for none; ``c`` and ``+`` mark the
first fragment and the continuations of a line older kernels stored in pieces); more
comma-separated fields may follow and are ignored. Lines that start with a space belong
to the record before them (device dictionary). Non-printable bytes arrive escaped as
``\\xNN``, so a message is one line.
"""

from __future__ import annotations

__all__ = [
    "FACILITY_KERNEL",
    "ContinuationJoiner",
    "KmsgRecord",
    "RecordSplitter",
    "level_name",
    "parse_record",
]

from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

FACILITY_KERNEL = 0
"""Facility of records the kernel wrote; userspace writes cannot carry it (it becomes 1)."""

_NO_DICTIONARY: Mapping[str, str] = MappingProxyType({})
_LEVELS = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_MAX_JOINED = 8192
"""Longest message a line joined from fragments may grow to (the kernel's own record cap)."""


def level_name(level: int) -> str:
    """Syslog name of a level 0-7 (``err`` for 3)."""
    return _LEVELS[level & 7]


class KmsgRecord(NamedTuple):
    """One kernel log record (a named tuple: built for every line, so built cheaply).

    Attributes:
        facility: syslog facility; 0 is the kernel itself.
        level: syslog level, 0 (emerg) to 7 (debug).
        seq: the record's sequence number; a gap means records were lost.
        timestamp_us: microseconds since boot when the record was logged.
        flags: ``-``, or ``c`` / ``+`` for pieces of a line stored in fragments.
        message: the text, with the kernel's ``\\xNN`` escapes left as they are.
        dictionary: ``KEY=value`` lines that followed the record (``DEVICE``, ``SUBSYSTEM``).
    """

    facility: int
    level: int
    seq: int
    timestamp_us: int
    flags: str
    message: str
    dictionary: Mapping[str, str] = _NO_DICTIONARY


def parse_record(text: str) -> KmsgRecord:
    """Parse one record: the header line and any dictionary lines after it.

    Raises:
        ValueError: when the header is not ``prio,seq,ts,flags;`` with numbers where
            numbers belong; the message quotes the start of the record.
    """
    first, _, rest = text.partition("\n")
    header, sep, message = first.partition(";")
    fields = header.split(",")
    if not sep or len(fields) < 4:
        raise ValueError(f"not a kmsg record (want 'prio,seq,ts,flags;message'): {first[:80]!r}")
    try:
        priority, seq, timestamp = int(fields[0]), int(fields[1]), int(fields[2])
    except ValueError:
        raise ValueError(
            f"not a kmsg record (priority, sequence and time must be numbers): {first[:80]!r}"
        ) from None
    if not rest:
        return KmsgRecord(priority >> 3, priority & 7, seq, timestamp, fields[3], message)
    dictionary: dict[str, str] = {}
    for line in rest.split("\n"):
        key, eq, value = line.strip().partition("=")
        if eq and key:
            dictionary[key] = value
    return KmsgRecord(priority >> 3, priority & 7, seq, timestamp, fields[3], message, dictionary)


class RecordSplitter:
    """Cuts a byte stream into record texts: a line, plus the space-led lines after it.

    ``/dev/kmsg`` hands over one whole record per read; a FIFO or file standing in for
    it hands over arbitrary chunks, so a record may straddle two reads. The splitter
    holds back the last record until a following line (or :meth:`flush`) shows it is
    complete. At most ``limit`` bytes of an unterminated line are kept.

    Args:
        limit: bytes of a partial line kept at most; beyond it the line is cut.
    """

    def __init__(self, *, limit: int = 65536) -> None:
        self._partial = b""
        self._record: list[str] = []
        self._limit = limit
        self._mid_line = False

    def feed(self, chunk: bytes) -> list[str]:
        """Add bytes; returns the records completed by them."""
        data = self._partial + chunk
        if self._mid_line:
            # After skipping ahead in a stream the first bytes may be the tail of a line.
            _, newline, data = data.partition(b"\n")
            if not newline:
                self._partial = b""
                return []
            self._mid_line = False
        lines = data.split(b"\n")
        self._partial = lines.pop()[: self._limit]
        done: list[str] = []
        for raw in lines:
            line = raw.decode("utf-8", errors="replace")
            if line.startswith(" ") and self._record:
                self._record.append(line)
                continue
            if self._record:
                done.append("\n".join(self._record))
            self._record = [line] if line else []
        return done

    def flush(self) -> list[str]:
        """Records held back waiting for dictionary lines: the source is idle, hand them over."""
        if not self._record:
            return []
        text = "\n".join(self._record)
        self._record = []
        return [text]

    @property
    def has_partial(self) -> bool:
        """True while bytes of an unterminated line are held."""
        return bool(self._partial)

    def discard(self, *, mid_line: bool = False) -> None:
        """Forget a held-back record and a partial line (the reader skipped ahead).

        Args:
            mid_line: the skip may have stopped inside a line: drop the bytes up to the
                next line break too (a record lost this way shows as a sequence gap).
        """
        self._partial = b""
        self._record = []
        self._mid_line = mid_line


class ContinuationJoiner:
    """Joins a line that older kernels logged in fragments (flags ``c`` then ``+``).

    Kernels since 5.10 assemble such lines themselves and always send ``-``. A ``c``
    fragment is held until the next record shows whether continuations follow, or until
    :meth:`flush`; a ``+`` without a held fragment stands alone.
    """

    def __init__(self) -> None:
        self._held: KmsgRecord | None = None

    def feed(self, record: KmsgRecord) -> list[KmsgRecord]:
        """Add a record; returns the complete lines it finishes, in order."""
        held = self._held
        if "+" in record.flags and held is not None:
            message = (held.message + record.message)[:_MAX_JOINED]
            self._held = held._replace(message=message)
            return []
        done = self.flush()
        if "c" in record.flags:
            self._held = record
            return done
        done.append(record)
        return done

    def flush(self) -> list[KmsgRecord]:
        """Hand over a held fragment as a complete line."""
        held, self._held = self._held, None
        return [] if held is None else [held]
