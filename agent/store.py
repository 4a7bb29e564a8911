"""The one SQLite database: event history, the MQTT outbox and condition state.

Threading: a :class:`Store` holds a single connection that must only be used from the
thread that opened it, which in the agent is the event loop's thread
(``check_same_thread=True`` enforces this). Calls are synchronous on purpose: in WAL
mode with ``synchronous=NORMAL`` a commit does not fsync, so a write takes well under
a millisecond, less than a hop to a worker thread would cost.

Group commit: on a running event loop, :meth:`Store.append_event` does not commit at once.
The event (and its outbox row, always in the same transaction) joins an open
transaction that is committed ``commit_delay`` later (a timer on the loop, 2 ms by
default), or at once when ``commit_limit`` events are pending, and always before anything
else touches the database: every other write (conditions, the remediation journal's
steps, outbox acknowledgements) and every read (the outbox sender's batches, the API's
history, metrics) commits the pending events first, so nothing outside the store ever
sees an uncommitted row, and the sender never publishes one (after a crash its sequence
would be reused by a different event). A remote command's nonce claim joins the group
too (:meth:`Store.claim_nonce`); its caller commits before replying. The sender is woken by
:meth:`Store.on_commit` listeners after the commit, once per group. Outside a running
loop (CLI tools, synchronous callers) every append commits at once, as before.

Durability: with ``synchronous=NORMAL`` a commit already survives only a process crash,
not a power loss; group commit widens the crash window by up to ``commit_delay`` for
events appended but not yet committed (they are lost, with their sequences; they were
never published). A failed group commit (full disk) loses the events of the group and is
logged as an error naming how many.

The schema and its migrations live in :mod:`agent.migrations`; event ids come from
:class:`agent.ids.EventIds`; the outbox's shed policy is in :mod:`agent.store_outbox`.
"""

from __future__ import annotations

__all__ = ["SCHEMA_VERSION", "OutboxEntry", "OutboxLimits", "OutboxStats", "Store", "StoreStats"]

import asyncio
import logging
import math
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from agent.errors import StoreCorruptError, StoreError
from agent.ids import EventIds
from agent.migrations import LAST_SEQUENCE_KEY, SCHEMA_VERSION, migrate
from agent.model import Condition, Event
from agent.store_checkpoint import COMMITS_PER_CHECKPOINT, WAL_BACKSTOP_PAGES, Checkpointer
from agent.store_errors import SQLITE_CORRUPT, hint, os_error, store_error
from agent.store_outbox import (
    OutboxEntry,
    OutboxLimits,
    OutboxStats,
    OutboxTally,
    batch,
    severity_rank,
)
from agent.store_rows import (
    CONDITION_COLUMNS,
    EVENT_COLUMNS,
    condition_from_row,
    condition_row,
    dumps,
    event_from_row,
    json_safe,
    type_filter,
)

logger = logging.getLogger(__name__)

_BUSY_TIMEOUT_MS: Final = 5_000
COMMIT_DELAY: Final = 0.002  # seconds an appended event may wait for its group's commit
COMMIT_LIMIT: Final = 64  # pending events that commit the group at once
TRIM_EVERY: Final = 64
"""The history is trimmed on every TRIM_EVERY-th sequence, so the table holds at most
``max_events + TRIM_EVERY - 1`` rows; reads show only the newest ``max_events``."""
NONCE_SWEEP_EVERY: Final = 60.0  # seconds between deletions of expired command nonces


# --- values -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Figures about the store, for metrics.

    Attributes:
        event_count: events currently held in the history.
        last_sequence: the sequence of the newest event ever appended (0 before the first).
        size_bytes: the main database file's size (page_count * page_size; excludes the WAL).
    """

    event_count: int
    last_sequence: int
    size_bytes: int


# --- the store ----------------------------------------------------------------------


class Store:
    """The agent's SQLite database: bounded event history and current conditions.

    Open it with :meth:`open`; use it as a context manager or call :meth:`close`. Every
    SQLite or filesystem failure surfaces as :class:`~agent.errors.StoreError` naming
    the file and what to do.
    """

    def __init__(
        self,
        *,
        path: Path,
        conn: sqlite3.Connection,
        max_events: int,
        outbox_limits: OutboxLimits | None = None,
        commit_delay: float = COMMIT_DELAY,
        commit_limit: int = COMMIT_LIMIT,
    ) -> None:
        """Wrap an open connection; use :meth:`open` instead."""
        self._path = path
        self._conn: sqlite3.Connection | None = conn
        self._max_events = max_events
        self._outbox_limits = outbox_limits or OutboxLimits()
        self._outbox: OutboxTally | None = None
        self._ids = EventIds()
        self._schema_version = 0
        self._checkpointer: Checkpointer | None = None
        self._commits = 0
        self._commit_delay = commit_delay
        self._commit_limit = commit_limit
        self._pending = 0  # appended events and nonce claims in the open (uncommitted) group
        self._group_timer: asyncio.TimerHandle | None = None
        self._listeners: list[Callable[[], None]] = []
        self._nonce_sweep_due = -math.inf  # epoch seconds of the next expired-nonce sweep

    # lifecycle

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        max_events: int = 10_000,
        outbox_limits: OutboxLimits | None = None,
        commit_delay: float = COMMIT_DELAY,
        commit_limit: int = COMMIT_LIMIT,
    ) -> Store:
        """Open (creating and migrating as needed) the database at ``path``.

        Args:
            path: the database file; its directory is created with mode 0700 if missing.
            max_events: how many events the history keeps; older ones are trimmed.
            outbox_limits: the MQTT outbox's bounds (defaults: 100,000 events, 64 MiB).
            commit_delay: seconds an event appended on a running loop may wait for its
                group's commit (see the module docstring); 0 commits every append at once.
            commit_limit: pending events that commit their group at once.

        Raises:
            ValueError: if ``max_events`` or ``commit_limit`` is less than 1, or
                ``commit_delay`` is negative.
            StoreError: if the file cannot be created or opened, is damaged, fails
                ``PRAGMA quick_check``, or has a schema newer than this code knows.
        """
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, got {max_events}")
        if commit_limit < 1 or not commit_delay >= 0:
            raise ValueError(
                f"commit_limit must be at least 1 and commit_delay not negative,"
                f" got {commit_limit} and {commit_delay!r}"
            )
        _prepare_file(path)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so each method is
            # exactly one transaction.
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as err:
            raise store_error("open the store", path, err) from err
        store = cls(
            path=path,
            conn=conn,
            max_events=max_events,
            outbox_limits=outbox_limits,
            commit_delay=commit_delay,
            commit_limit=commit_limit,
        )
        try:
            store._start()
        except BaseException:
            conn.close()
            raise
        return store

    def _start(self) -> None:
        conn = self._connection()
        try:
            if _configure(conn, self._path):
                conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_BACKSTOP_PAGES}")
                self._checkpointer = Checkpointer(self._path)
            _quick_check(conn, self._path)
            self._schema_version = migrate(conn, self._path)
            row = conn.execute("SELECT id FROM events ORDER BY sequence DESC LIMIT 1").fetchone()
            self._outbox = OutboxTally(conn, self._outbox_limits)
        except sqlite3.Error as err:
            raise store_error("open the store", self._path, err) from err
        if row is not None:
            self._ids.seed(row[0])
        logger.info(
            "store %s open: schema version %d, last event sequence %d",
            self._path,
            self._schema_version,
            self.last_sequence(),
        )

    def close(self) -> None:
        """Commit pending events, close the connection; idempotent. Later calls raise StoreError."""
        if self._conn is None:
            return
        try:
            self.commit()
        except StoreError as err:
            logger.error("%s", err)
        conn, self._conn = self._conn, None
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.close()  # first: closing the last connection checkpoints the WAL
        try:
            conn.execute("PRAGMA optimize")  # keeps query plans good; cheap at close
        except sqlite3.Error as err:
            logger.warning("store %s: PRAGMA optimize failed at close: %s", self._path, err)
        finally:
            conn.close()

    def __enter__(self) -> Store:
        """Return the store itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the store."""
        self.close()

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def schema_version(self) -> int:
        """The schema version of the open database (equals :data:`SCHEMA_VERSION`)."""
        return self._schema_version

    # events

    def append_event(
        self,
        *,
        source: str,
        type: str,
        subject: str | None,
        data: Mapping[str, Any],
        time: float,
        outbox: bool = False,
    ) -> Event:
        """Persist a new event and return it with its id and sequence.

        In one transaction: take the next sequence, insert the event, trim the history
        (every :data:`TRIM_EVERY` sequences; reads never show more than ``max_events``)
        and, with ``outbox``, queue its CloudEvent in the outbox
        (shedding if that overflows it), so an event is never recorded without being
        queued. Non-finite floats in ``data`` are stored (and returned) as None. On a
        running event loop the commit may be deferred by up to ``commit_delay`` (see the
        module docstring); :meth:`on_commit` listeners hear of it after the commit.

        Args:
            source: ``nodemedic://<node>``.
            type: the event type, e.g. ``io.nodemedic.condition.firing``.
            subject: what the event is about, or None.
            data: the JSON payload.
            time: epoch seconds the event happened; also the id's timestamp.
            outbox: also queue the event for MQTT (see :meth:`outbox_batch`).

        Raises:
            ValueError: if ``time`` is not a finite, non-negative epoch.
            TypeError: if ``data`` holds something JSON cannot represent.
            StoreError: if the database cannot be written (full disk, I/O error).
        """
        if not math.isfinite(time) or time < 0:
            raise ValueError(f"event time must be a finite epoch in seconds, got {time!r}")
        safe_data: dict[str, Any] = json_safe(data)
        try:
            text = dumps(safe_data)
        except TypeError as err:
            raise TypeError(f"data of event {type!r} is not JSON-serialisable: {err}") from err
        event_id = self._ids.next(math.floor(time * 1000))
        tally = self._require_outbox()
        delta = (0, 0, 0)
        with self._transaction("append an event to", group=True) as conn:
            (last,) = conn.execute(
                "UPDATE meta SET value = value + 1 WHERE key = ? RETURNING value",
                (LAST_SEQUENCE_KEY,),
            ).fetchone()
            sequence = int(last)
            conn.execute(
                f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608  (constant columns)
                (sequence, event_id, source, type, subject, time, text),
            )
            if sequence % TRIM_EVERY == 0:
                # Sequences in the table are contiguous, so this drops exactly the overflow.
                # Once per TRIM_EVERY appends: one DELETE of many rows costs about what
                # one of a single row does.
                conn.execute(
                    "DELETE FROM events WHERE sequence <= ?", (sequence - self._max_events,)
                )
            event = Event(
                id=event_id,
                source=source,
                type=type,
                time=time,
                sequence=sequence,
                subject=subject,
                data=safe_data,
            )
            if outbox:
                envelope = event.to_cloudevent()
                del envelope["data"]  # last in the envelope; its JSON is ``text`` already
                payload = f'{dumps(envelope)[:-1]},"data":{text}}}'
                entry = OutboxEntry(sequence, type, time, payload.encode("utf-8"))
                delta = tally.insert(conn, entry, severity_rank(safe_data))
        tally.apply(*delta)
        if delta[2]:
            logger.debug("outbox full: shed %d events for event %d", delta[2], sequence)
        return event

    def events(
        self, *, type: str | None = None, since: int | None = None, limit: int = 100
    ) -> list[Event]:
        """Stored events, oldest first.

        Args:
            type: only events of this type; a value ending in ``.`` or ``*`` matches by
                prefix (``io.nodemedic.condition.*``); None for all.
            since: a sequence cursor, exclusive: up to ``limit`` events after it, in order.
                Without it, the newest ``limit`` events.
            limit: the most events to return.

        Raises:
            ValueError: if ``limit`` is negative.
            StoreError: if the database cannot be read.
        """
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        where, params = type_filter(type)
        where.append(_KEPT)  # rows past max_events that wait for their trim
        params += [LAST_SEQUENCE_KEY, self._max_events]
        if since is not None:
            where.append("sequence > ?")
            params.append(since)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        order = "ASC" if since is not None else "DESC"
        sql = f"SELECT {EVENT_COLUMNS} FROM events {clause} ORDER BY sequence {order} LIMIT ?"  # noqa: S608  (constant fragments; values are bound)
        rows = self._read("read events from", sql, (*params, limit))
        if since is None:
            rows.reverse()
        return [event_from_row(row) for row in rows]

    def last_sequence(self) -> int:
        """The sequence of the newest event ever appended; 0 before the first.

        Raises:
            StoreError: if the database cannot be read.
        """
        rows = self._read(
            "read the sequence from",
            "SELECT value FROM meta WHERE key = ?",
            (LAST_SEQUENCE_KEY,),
        )
        return int(rows[0][0])

    # outbox

    def outbox_batch(self, *, after: int = 0, limit: int = 100) -> list[OutboxEntry]:
        """Queued events with a sequence above ``after``, oldest first, at most ``limit``.

        Raises:
            ValueError: if ``limit`` is less than 1.
            StoreError: if the database cannot be read.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.commit()  # the sender must never publish an uncommitted row
        try:
            return batch(self._connection(), after=after, limit=limit)
        except sqlite3.Error as err:
            raise store_error("read the outbox of", self._path, err) from err

    def outbox_ack(self, sequences: Iterable[int]) -> int:
        """Remove acknowledged events from the outbox in one transaction.

        Sequences no longer queued (shed meanwhile, or acknowledged twice) are ignored.

        Returns:
            How many rows were removed.

        Raises:
            StoreError: if the database cannot be written.
        """
        wanted = list(sequences)
        if not wanted:
            return 0
        tally = self._require_outbox()
        with self._transaction("acknowledge events in the outbox of") as conn:
            rows, size = tally.ack(conn, wanted)
        tally.apply(-rows, -size)
        return rows

    def outbox_stats(self) -> OutboxStats:
        """Depth, bytes, the oldest event's time and the shed count of the outbox.

        Raises:
            StoreError: if the database cannot be read.
        """
        self.commit()
        try:
            return self._require_outbox().stats(self._connection())
        except sqlite3.Error as err:
            raise store_error("read the outbox of", self._path, err) from err

    def outbox_used_ratio(self) -> float:
        """How full the outbox is, as ``outbox_stats().used_ratio`` but from the tally alone.

        Cheap enough to sample every second: no read of the table.

        Raises:
            StoreError: if the store is closed or a pending group cannot be committed.
        """
        self.commit()  # the tally counts committed rows only
        return self._require_outbox().used_ratio

    # conditions

    def save_conditions(self, conditions: Iterable[Condition]) -> None:
        """Replace every stored condition with ``conditions``, in one transaction.

        Raises:
            ValueError: if two conditions share a key (rule and labels).
            StoreError: if the database cannot be written.
        """
        rows: dict[tuple[str, str], tuple[Any, ...]] = {}
        for condition in conditions:
            row = condition_row(condition)
            if (row[0], row[1]) in rows:
                raise ValueError(f"duplicate condition {condition.rule} {dict(condition.labels)}")
            rows[(row[0], row[1])] = row
        placeholders = ", ".join("?" * 9)
        with self._transaction("save conditions to") as conn:
            conn.execute("DELETE FROM conditions")
            conn.executemany(
                f"INSERT INTO conditions ({CONDITION_COLUMNS}) VALUES ({placeholders})",  # noqa: S608  (constant columns)
                rows.values(),
            )

    def load_conditions(self) -> list[Condition]:
        """Every stored condition, ordered by rule and labels.

        Raises:
            StoreError: if the database cannot be read.
        """
        rows = self._read(
            "load conditions from",
            f"SELECT {CONDITION_COLUMNS} FROM conditions ORDER BY rule, labels",  # noqa: S608  (constant columns)
            (),
        )
        return [condition_from_row(row) for row in rows]

    # feature tables (the remediation journal): raw SQL through the store's error policy

    @contextmanager
    def transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT) for a feature's own tables.

        Args:
            action: what is being done, for the error message (``record a run in``).

        Raises:
            StoreError: naming the file and what to do when SQLite fails; rolled back.
        """
        with self._transaction(action) as conn:
            yield conn

    def query(self, action: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Rows of one read-only statement.

        Raises:
            StoreError: naming the file and what to do when SQLite fails.
        """
        return self._read(action, sql, params)

    # metrics

    def stats(self) -> StoreStats:
        """Event count, last sequence and database size, for metrics.

        Raises:
            StoreError: if the database cannot be read.
        """
        (count,) = self._read(
            "count events in",
            f"SELECT COUNT(*) FROM events WHERE {_KEPT}",  # noqa: S608  (a constant fragment)
            (LAST_SEQUENCE_KEY, self._max_events),
        )[0]
        (pages,) = self._read("size", "PRAGMA page_count", ())[0]
        (page_size,) = self._read("size", "PRAGMA page_size", ())[0]
        return StoreStats(
            event_count=int(count),
            last_sequence=self.last_sequence(),
            size_bytes=int(pages) * int(page_size),
        )

    # remote command nonces

    def claim_nonce(self, key_id: str, nonce: str, *, expires_at: float, now: float) -> bool:
        """Record a command's nonce; False when it was seen before (a replay).

        The claim joins the open group of appended events like an append does (see the
        module docstring), so a command's claim and its outcome event commit together.
        The caller must :meth:`commit` before anything reveals that the command was
        accepted (its reply): a crash before that commit then loses the claim together
        with every trace of the command, and a replay after the restart is its first
        delivery. Anything the command does through the store commits the claim first,
        as every other write does.

        Nonces of commands that have expired are forgotten, at most every
        :data:`NONCE_SWEEP_EVERY` seconds: the expiry check rejects those commands on
        its own, so the cache stays bounded by what can still be valid.

        Raises:
            StoreError: when the database cannot be written.
        """
        with self._transaction("record a command nonce", group=True) as conn:
            due = self._nonce_sweep_due
            if not due - NONCE_SWEEP_EVERY <= now < due:  # due, or the clock stepped back
                conn.execute("DELETE FROM command_nonces WHERE expires_at < ?", (now,))
                self._nonce_sweep_due = now + NONCE_SWEEP_EVERY
            inserted = conn.execute(
                "INSERT OR IGNORE INTO command_nonces (key_id, nonce, expires_at) VALUES (?, ?, ?)",
                (key_id, nonce, expires_at),
            ).rowcount
        return inserted == 1

    # group commit

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every commit that made appended events durable.

        The MQTT sender wakes on it, so one wake-up publishes a whole committed group.
        A listener must not raise.
        """
        self._listeners.append(listener)

    def commit(self) -> None:
        """Commit the pending group of appended events now; a no-op when there is none.

        Raises:
            StoreError: if the commit fails; the group's events are then lost (logged).
        """
        if not self._pending:
            return
        conn = self._connection()
        pending = self._pending
        self._end_group()
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._lost(pending)
            raise store_error("commit events to", self._path, err) from err
        self._committed(events=pending)

    def _end_group(self) -> None:
        self._pending = 0
        if self._group_timer is not None:
            self._group_timer.cancel()
            self._group_timer = None

    def _lost(self, events: int) -> None:
        """A group was rolled back: say so, and recount the outbox it had added to."""
        logger.error(
            "store %s: lost %d appended events or nonce claims whose commit failed",
            self._path,
            events,
        )
        with suppress(sqlite3.Error):
            self._outbox = OutboxTally(self._connection(), self._outbox_limits)

    def _commit_due(self) -> None:
        self._group_timer = None
        try:
            self.commit()
        except StoreError as err:
            logger.error("%s", err)

    def _committed(self, *, events: int) -> None:
        # A group counts as one commit per event: the checkpoints keep pace with the WAL
        # as they did with one commit per event (a group writes fewer pages, not more).
        self._commits += max(1, events)
        if self._commits >= COMMITS_PER_CHECKPOINT and self._checkpointer is not None:
            self._commits = 0
            self._checkpointer.request()
        if events:
            for listener in self._listeners:
                listener()

    def _defer(self) -> bool:
        """Whether the append just made may wait for its group's commit (and arm the timer)."""
        if self._commit_delay <= 0 or self._pending + 1 >= self._commit_limit:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._pending += 1
        if self._group_timer is None:
            self._group_timer = loop.call_later(self._commit_delay, self._commit_due)
        return True

    # plumbing

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"store {self._path} is closed")
        return self._conn

    def _require_outbox(self) -> OutboxTally:
        self._connection()  # a closed store says so first
        if self._outbox is None:
            raise StoreError(f"store {self._path} is not open")
        return self._outbox

    def _read(self, action: str, sql: str, params: tuple[Any, ...]) -> list[Any]:
        self.commit()  # nothing outside the store sees an uncommitted row
        conn = self._connection()
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as err:
            raise store_error(action, self._path, err) from err

    @contextmanager
    def _transaction(self, action: str, *, group: bool = False) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error; SQLite errors become StoreError.

        With ``group`` (an event append) the writes join the open group and the commit
        may be deferred; any other transaction commits the pending group first.
        """
        if not group:
            self.commit()
        conn = self._connection()
        try:
            if not self._pending:
                conn.execute("BEGIN IMMEDIATE")
            yield conn
            if group and self._defer():
                return
            conn.execute("COMMIT")
            events = self._pending + 1 if group else 0
        except BaseException as err:
            if conn.in_transaction:
                with suppress(sqlite3.Error):  # SQLite may have rolled back already
                    conn.execute("ROLLBACK")
            if self._pending:
                self._lost(self._pending)
            self._end_group()
            if isinstance(err, sqlite3.Error):
                raise store_error(action, self._path, err) from err
            raise
        self._end_group()
        self._committed(events=events)


_KEPT: Final = "sequence > (SELECT value FROM meta WHERE key = ?) - ?"
"""The rows of the history proper: the newest ``max_events`` sequences (bind the
sequence's key and ``max_events``)."""


# --- open helpers -------------------------------------------------------------------


def _prepare_file(path: Path) -> None:
    """Create the directory (0700) and an empty database file (0600) if missing."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise os_error("create the state directory for", path, err) from err
    # SQLite would create the file with the umask's mode; the -wal and -shm files copy it.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as err:
        raise os_error("create", path, err) from err
    os.close(fd)


def _configure(conn: sqlite3.Connection, path: Path) -> bool:
    """Set the connection's pragmas; True when the database is in WAL mode."""
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    wal = str(mode).lower() == "wal"
    if not wal:
        # e.g. a filesystem without shared memory; still correct, only slower.
        logger.warning("store %s: WAL journal mode unavailable, using %s", path, mode)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return wal


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(10)").fetchall()]
    if problems != ["ok"]:
        report = " ".join("; ".join(problems).split())  # SQLite's report spans lines
        raise StoreCorruptError(
            f"store {path} failed its integrity check ({report[:300]}); {hint(SQLITE_CORRUPT)}"
        )
