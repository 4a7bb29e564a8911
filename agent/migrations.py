"""The store's schema: its ordered migrations and the code that applies them.

:data:`MIGRATIONS` is append-only. Migration *n* (1-based) brings the database to
schema version *n*; each runs in its own transaction and is recorded in
``schema_migrations``. Later features (the outbox, the remediation journal, the nonce
cache) append migrations here; never edit one that has shipped.

SQLite errors propagate unchanged: the caller (:class:`~agent.store.Store`) translates
them into :class:`~agent.errors.StoreError` naming the file and what to do.
"""

from __future__ import annotations

__all__ = [
    "LAST_SEQUENCE_KEY",
    "MIGRATIONS",
    "OUTBOX_SHED_KEY",
    "SCHEMA_VERSION",
    "Migration",
    "migrate",
]

import logging
import sqlite3
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.errors import StoreError

logger = logging.getLogger(__name__)

LAST_SEQUENCE_KEY: Final = "last_sequence"
"""The ``meta`` row holding the sequence of the newest event ever appended."""
OUTBOX_SHED_KEY: Final = "outbox_shed_total"
"""The ``meta`` row counting events the outbox has shed since the database was created."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema change.

    Attributes:
        description: what it adds, recorded in ``schema_migrations``.
        apply: runs the change on a connection already inside a transaction.
    """

    description: str
    apply: Callable[[sqlite3.Connection], None]


def _m1_events_and_conditions(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID")
    conn.execute("INSERT INTO meta (key, value) VALUES (?, 0)", (LAST_SEQUENCE_KEY,))
    # sequence is the rowid: cursor paging and trimming are range scans on the primary key.
    conn.execute(
        "CREATE TABLE events ("
        " sequence INTEGER PRIMARY KEY,"
        " id TEXT NOT NULL UNIQUE,"
        " source TEXT NOT NULL,"
        " type TEXT NOT NULL,"
        " subject TEXT,"
        " time REAL NOT NULL,"
        " data TEXT NOT NULL)"
    )
    conn.execute("CREATE INDEX events_by_type ON events (type, sequence)")
    conn.execute(
        "CREATE TABLE conditions ("
        " rule TEXT NOT NULL,"
        " labels TEXT NOT NULL,"
        " state TEXT NOT NULL,"
        " severity TEXT NOT NULL,"
        " value REAL,"
        " since REAL NOT NULL,"
        " pending_since REAL,"
        " description TEXT NOT NULL,"
        " flaps TEXT NOT NULL,"
        " PRIMARY KEY (rule, labels))"
    )


def _m2_outbox(conn: sqlite3.Connection) -> None:
    # A copy of each event's CloudEvent JSON, not a reference into `events`: the history is
    # trimmed by count while the outbox must keep what the broker has not acknowledged.
    conn.execute(
        "CREATE TABLE outbox ("
        " sequence INTEGER PRIMARY KEY,"
        " severity INTEGER NOT NULL,"
        " type TEXT NOT NULL,"
        " time REAL NOT NULL,"
        " payload BLOB NOT NULL)"
    )
    # The shed order: lowest severity first, then oldest.
    conn.execute("CREATE INDEX outbox_by_severity ON outbox (severity, sequence)")
    conn.execute("INSERT INTO meta (key, value) VALUES (?, 0)", (OUTBOX_SHED_KEY,))


def _m3_nonces(conn: sqlite3.Connection) -> None:
    # One row per accepted remote command, kept until the command would have expired:
    # after that the expiry check alone rejects a replay.
    conn.execute(
        "CREATE TABLE command_nonces ("
        " key_id TEXT NOT NULL,"
        " nonce TEXT NOT NULL,"
        " expires_at REAL NOT NULL,"
        " PRIMARY KEY (key_id, nonce)"
        ") WITHOUT ROWID"
    )
    conn.execute("CREATE INDEX command_nonces_by_expiry ON command_nonces (expires_at)")


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration("event history, sequence counter and conditions", _m1_events_and_conditions),
    Migration("MQTT outbox and its shed counter", _m2_outbox),
    Migration("remote command nonce cache", _m3_nonces),
)
"""Every migration, oldest first; append only."""

SCHEMA_VERSION: Final = len(MIGRATIONS)
"""The schema version this code creates and understands."""


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Apply pending migrations, one transaction each; return the resulting version.

    Args:
        conn: an open connection in autocommit mode (``isolation_level=None``).
        path: the database file, for log lines and error messages.

    Raises:
        StoreError: if the database's schema is newer than :data:`SCHEMA_VERSION`.
        sqlite3.Error: if a migration fails; its transaction is rolled back.
    """
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY,"
        " description TEXT NOT NULL,"
        " applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"
    )
    version = _applied_version(conn)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"store {path} has schema version {version}, newer than the {SCHEMA_VERSION} this"
            " nodemedic knows; upgrade nodemedic, or move the file aside to start afresh"
        )
    for number, migration in enumerate(MIGRATIONS, start=1):
        if number <= version:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while we waited for the write lock.
            if _applied_version(conn) < number:
                logger.info(
                    "store %s: migrating to schema version %d (%s)",
                    path,
                    number,
                    migration.description,
                )
                migration.apply(conn)
                conn.execute(
                    "INSERT INTO schema_migrations (version, description) VALUES (?, ?)",
                    (number, migration.description),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        version = number
    return version


def _applied_version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
    return int(version)
