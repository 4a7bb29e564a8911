"""WAL checkpoints on a thread of their own, so no commit on the event loop waits for one.

SQLite's automatic checkpoint runs inside the commit that crosses ``wal_autocheckpoint``
pages, on the committing thread, and a checkpoint syncs the database file: with one
commit per event that is a stall of milliseconds on the event loop every few hundred
events. The :class:`~agent.store.Store` moves the automatic checkpoint up to
:data:`WAL_BACKSTOP_PAGES` and asks a :class:`Checkpointer` for a passive checkpoint
(which never blocks writers) after every :data:`COMMITS_PER_CHECKPOINT` commits; the
backstop then finds most of the WAL copied already. Durability is unchanged: committed transactions
are in the WAL either way, and a SIGKILL loses none of them.
"""

from __future__ import annotations

__all__ = ["COMMITS_PER_CHECKPOINT", "WAL_BACKSTOP_PAGES", "Checkpointer"]

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Final

logger = logging.getLogger(__name__)

COMMITS_PER_CHECKPOINT: Final = 200  # about SQLite's default of 1000 WAL pages
# A passive checkpoint racing a steady writer never catches up with the WAL's end, and
# only a fully checkpointed WAL is started over: the committing thread's own checkpoint
# stays on at this many pages (16 MiB) as the backstop that bounds the file.
WAL_BACKSTOP_PAGES: Final = 4000
_BUSY_TIMEOUT_MS: Final = 5_000
_JOIN_TIMEOUT: Final = 10.0  # seconds close() waits for a checkpoint under way


class Checkpointer:
    """A thread with its own connection to ``path`` that checkpoints the WAL when asked.

    Args:
        path: the database file (already in WAL mode).
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._due = threading.Event()
        self._stopping = False
        self._failing = False
        self._thread = threading.Thread(
            target=self._run, name=f"store-checkpoint-{path.name}", daemon=True
        )
        self._thread.start()

    def request(self) -> None:
        """Checkpoint soon (returns at once)."""
        self._due.set()

    def close(self) -> None:
        """Stop the thread after the checkpoint under way, if any."""
        self._stopping = True
        self._due.set()
        self._thread.join(timeout=_JOIN_TIMEOUT)

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as err:
            logger.warning("store %s: cannot open the checkpoint connection: %s", self._path, err)
            return
        try:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            while True:
                self._due.wait()
                self._due.clear()
                if self._stopping:
                    return
                self._checkpoint(conn)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as err:
            if not self._failing:
                logger.warning("store %s: WAL checkpoint failed: %s", self._path, err)
            self._failing = True
            return
        if self._failing:
            logger.info("store %s: WAL checkpoints work again", self._path)
        self._failing = False
