"""The MQTT outbox inside the store: rows, the shed policy and its bookkeeping.

An outbox row is an event's CloudEvent JSON, queued in the same transaction that appends
the event to the history, and deleted when the broker acknowledges it (PUBACK). The
outbox is bounded by count and by bytes; a row that would overflow it makes room by
*shedding*: rows are deleted lowest severity first (info, then warning, then critical)
and, within a severity, oldest first. The new row itself may be the one shed. Every shed
row is counted in the ``meta`` table, in the same transaction.

These functions run inside a transaction the :class:`~agent.store.Store` owns; SQLite
errors propagate for it to translate.
"""

from __future__ import annotations

__all__ = [
    "OutboxEntry",
    "OutboxLimits",
    "OutboxStats",
    "OutboxTally",
    "batch",
    "fullness",
    "severity_rank",
]

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from agent.migrations import OUTBOX_SHED_KEY
from agent.model import Severity

_MAX_BOUND_PARAMETERS: Final = 500  # well under SQLite's 32766 default
_INFO_RANK: Final = Severity.INFO.rank


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    """How much the outbox may hold before it sheds.

    Attributes:
        max_events: rows.
        max_bytes: total payload bytes.
    """

    max_events: int = 100_000
    max_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_events < 1 or self.max_bytes < 1:
            raise ValueError(f"outbox limits must be positive, got {self}")


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One queued event, ready to publish.

    Attributes:
        sequence: the event's per-node sequence (the row's key and the publish order).
        type: the event type (names the topic).
        time: epoch seconds the event happened.
        payload: the CloudEvent as UTF-8 JSON.
    """

    sequence: int
    type: str
    time: float
    payload: bytes


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Figures about the outbox, for metrics and the outbox-full condition.

    Attributes:
        depth: rows waiting for a PUBACK.
        bytes: their total payload size.
        oldest_time: epoch seconds of the oldest waiting event, None when empty.
        shed_total: rows shed since the database was created.
        max_events: the count bound.
        max_bytes: the byte bound.
    """

    depth: int
    bytes: int
    oldest_time: float | None
    shed_total: int
    max_events: int
    max_bytes: int

    @property
    def used_ratio(self) -> float:
        """The fuller of count and bytes, as a share of its bound (1.0 means full)."""
        return fullness(self.depth, self.bytes, self.max_events, self.max_bytes)


def fullness(depth: int, size: int, max_events: int, max_bytes: int) -> float:
    """The fuller of count and bytes, as a share of its bound (1.0 means full)."""
    return max(depth / max_events, size / max_bytes)


def severity_rank(data: Mapping[str, Any]) -> int:
    """The shed rank of an event: its ``data["severity"]`` (conditions), else info."""
    severity = data.get("severity")
    if severity is None:
        return _INFO_RANK
    try:
        return Severity(severity).rank
    except ValueError:
        return Severity.INFO.rank


class OutboxTally:
    """Running count and byte total of the outbox, so no insert has to scan the table.

    The store is the only writer; the tally is loaded at open and changed only after
    the transaction that changed the table has committed (see :meth:`pending`).
    """

    def __init__(self, conn: sqlite3.Connection, limits: OutboxLimits) -> None:
        """Count the rows on an open, migrated connection."""
        self.limits = limits
        (depth, size) = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
        ).fetchone()
        (shed,) = conn.execute(
            "SELECT value FROM meta WHERE key = ?", (OUTBOX_SHED_KEY,)
        ).fetchone()
        self.depth = int(depth)
        self.bytes = int(size)
        self.shed_total = int(shed)

    def insert(
        self, conn: sqlite3.Connection, entry: OutboxEntry, severity: int
    ) -> tuple[int, int, int]:
        """Queue ``entry``, shedding to stay in bounds; returns the tally's deltas.

        Returns:
            (rows added net, bytes added net, rows shed), to :meth:`apply` after commit.
        """
        conn.execute(
            "INSERT INTO outbox (sequence, severity, type, time, payload) VALUES (?, ?, ?, ?, ?)",
            (entry.sequence, severity, entry.type, entry.time, entry.payload),
        )
        depth = self.depth + 1
        size = self.bytes + len(entry.payload)
        shed: list[int] = []
        over_count = depth - self.limits.max_events
        over_bytes = size - self.limits.max_bytes
        if over_count > 0 or over_bytes > 0:
            freed = 0
            rows = conn.execute(
                "SELECT sequence, LENGTH(payload) FROM outbox ORDER BY severity, sequence"
            )
            for sequence, length in rows:
                if len(shed) >= over_count and freed >= over_bytes:
                    break
                shed.append(int(sequence))
                freed += int(length)
            rows.close()
            _delete(conn, shed)
            conn.execute(
                "UPDATE meta SET value = value + ? WHERE key = ?", (len(shed), OUTBOX_SHED_KEY)
            )
            size -= freed
            depth -= len(shed)
        return depth - self.depth, size - self.bytes, len(shed)

    def ack(self, conn: sqlite3.Connection, sequences: Iterable[int]) -> tuple[int, int]:
        """Delete acknowledged rows (missing ones are ignored); returns (rows, bytes) removed."""
        wanted = sorted(set(sequences))
        rows = 0
        size = 0
        for start in range(0, len(wanted), _MAX_BOUND_PARAMETERS):
            chunk = wanted[start : start + _MAX_BOUND_PARAMETERS]
            marks = ", ".join("?" * len(chunk))
            for (length,) in conn.execute(
                f"DELETE FROM outbox WHERE sequence IN ({marks}) RETURNING LENGTH(payload)",  # noqa: S608  (placeholders only)
                chunk,
            ).fetchall():
                rows += 1
                size += int(length)
        return rows, size

    def apply(self, rows: int, size: int, shed: int = 0) -> None:
        """Add committed deltas to the tally."""
        self.depth += rows
        self.bytes += size
        self.shed_total += shed

    @property
    def used_ratio(self) -> float:
        """How full the outbox is (as :attr:`OutboxStats.used_ratio`), without a read."""
        return fullness(self.depth, self.bytes, self.limits.max_events, self.limits.max_bytes)

    def stats(self, conn: sqlite3.Connection) -> OutboxStats:
        """The current figures (one indexed read for the oldest row)."""
        row = conn.execute("SELECT time FROM outbox ORDER BY sequence LIMIT 1").fetchone()
        return OutboxStats(
            depth=self.depth,
            bytes=self.bytes,
            oldest_time=None if row is None else float(row[0]),
            shed_total=self.shed_total,
            max_events=self.limits.max_events,
            max_bytes=self.limits.max_bytes,
        )


def batch(conn: sqlite3.Connection, *, after: int, limit: int) -> list[OutboxEntry]:
    """Up to ``limit`` rows with a sequence above ``after``, oldest first."""
    rows = conn.execute(
        "SELECT sequence, type, time, payload FROM outbox WHERE sequence > ?"
        " ORDER BY sequence LIMIT ?",
        (after, limit),
    ).fetchall()
    return [OutboxEntry(int(s), str(t), float(tm), bytes(p)) for s, t, tm, p in rows]


def _delete(conn: sqlite3.Connection, sequences: list[int]) -> None:
    for start in range(0, len(sequences), _MAX_BOUND_PARAMETERS):
        chunk = sequences[start : start + _MAX_BOUND_PARAMETERS]
        marks = ", ".join("?" * len(chunk))
        conn.execute(f"DELETE FROM outbox WHERE sequence IN ({marks})", chunk)  # noqa: S608  (placeholders only)
