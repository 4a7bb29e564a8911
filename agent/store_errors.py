"""How SQLite and filesystem failures become :class:`~agent.errors.StoreError` with a fix."""

from __future__ import annotations

__all__ = ["SQLITE_CORRUPT", "hint", "os_error", "store_error"]

import errno
import sqlite3
from pathlib import Path
from typing import Final

from agent.errors import StoreCorruptError, StoreError

_SQLITE_PERM: Final = 3
_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6
_SQLITE_READONLY: Final = 8
_SQLITE_IOERR: Final = 10
SQLITE_CORRUPT: Final = 11
_SQLITE_FULL: Final = 13
_SQLITE_CANTOPEN: Final = 14
_SQLITE_NOTADB: Final = 26


def hint(code: int | None) -> str:
    """What to do about a failure with SQLite result ``code``."""
    primary = None if code is None else code & 0xFF
    if primary in (SQLITE_CORRUPT, _SQLITE_NOTADB):
        return (
            "the file is damaged or not a SQLite database; stop the agent and move it aside"
            " together with its -wal and -shm files (a new, empty store is created at the next"
            " start) or restore it from a backup"
        )
    if primary == _SQLITE_FULL:
        return "the filesystem is full; free space on it"
    if primary in (_SQLITE_CANTOPEN, _SQLITE_READONLY, _SQLITE_PERM):
        return "check that the directory exists and is writable by the agent's user"
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return "another process holds a lock on the database; is a second agent running?"
    if primary == _SQLITE_IOERR:
        return "the disk reported an I/O error; check the kernel log"
    return "see the SQLite error above"


def store_error(action: str, path: Path, err: sqlite3.Error) -> StoreError:
    """The StoreError (StoreCorruptError for a damaged file) for a failed ``action``."""
    code: int | None = getattr(err, "sqlite_errorcode", None)
    message = f"cannot {action} {path}: {err}; {hint(code)}"
    if code is not None and code & 0xFF in (SQLITE_CORRUPT, _SQLITE_NOTADB):
        return StoreCorruptError(message)
    return StoreError(message)


def os_error(action: str, path: Path, err: OSError) -> StoreError:
    """The StoreError for a filesystem failure while trying to ``action``."""
    if err.errno == errno.ENOSPC:
        hint = "the filesystem is full; free space on it"
    else:
        hint = "check that the state directory is a directory writable by the agent's user"
    return StoreError(f"cannot {action} {path}: {err.strerror or err}; {hint}")
