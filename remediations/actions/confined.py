"""Walking and unlinking files beneath a root without ever leaving it.

Every directory is opened relative to its parent's descriptor with ``O_NOFOLLOW``, from
``/`` down to the root and from the root down to each file, and names never contain
``/`` or ``..``. A symlink anywhere, including a directory swapped for one after it was
listed, makes that open fail instead of being followed. Before a file is unlinked
through its directory's descriptor, it must still be the regular file (same device and
inode) that was listed; ``unlink`` itself never follows a final symlink.

Limits, by construction: a directory can be *renamed* elsewhere after its descriptor was
opened; an unlink through that descriptor then removes a file that was beneath the root
when listed (same inode), so nothing that was outside is ever touched. A name replaced
by another regular file between the check and the unlink is a window of microseconds
that only the owner of that directory can use, on a file inside the root.
"""

from __future__ import annotations

__all__ = ["ConfinedFile", "FileListing", "glob_regex", "list_files", "open_root", "unlink_file"]

import errno
import math
import os
import re
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_DEPTH = 64
"""Deeper trees are not walked: one descriptor per level is held open."""


@dataclass(frozen=True, slots=True)
class ConfinedFile:
    """A regular file found beneath the root.

    Attributes:
        path: its path relative to the root (``logs/app.1.gz``).
        dev: device of the file (the root's: other filesystems are not walked).
        ino: inode number, so a replaced file is recognised.
        size: its size in bytes.
        allocated: bytes of disk it occupies (what deleting it frees, if no other
            link or open descriptor keeps it).
        mtime: modification time (seconds since the epoch).
        nlink: its number of hard links.
    """

    path: str
    dev: int
    ino: int
    size: int
    allocated: int
    mtime: float
    nlink: int


@dataclass(slots=True)
class FileListing:
    """What a walk found: matching files, and what it passed over and why."""

    files: list[ConfinedFile] = field(default_factory=list)
    passed_over: dict[str, str] = field(default_factory=dict)
    """Relative path -> reason (a symlink, another filesystem, too deep, unreadable)."""


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob over relative paths: ``*``/``?``/``[..]`` stay in one segment, ``**`` spans.

    Raises:
        ValueError: for an absolute pattern or one with a ``..`` segment.
    """
    if pattern.startswith("/") or ".." in PurePosixPath(pattern).parts:
        raise ValueError(f"glob {pattern!r} must be relative to the root, without '..'")
    parts: list[str] = []
    segments = pattern.split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            parts.append(".*" if last else "(?:[^/]+/)*")
            continue
        parts.append(_segment_regex(segment) + ("" if last else "/"))
    return re.compile("".join(parts))


def _segment_regex(segment: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(segment):
        char = segment[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (end := segment.find("]", i + 2)) != -1:
            body = segment[i + 1 : end]
            negate = body.startswith("!")
            body = re.escape(body[1:] if negate else body).replace("\\-", "-")
            out.append(f"[{'^' if negate else ''}{body}]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def _open_dir(fd: int, name: str) -> int:
    """Open directory ``name`` relative to ``fd``; a symlink fails with ELOOP, never followed."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=fd)
    except NotADirectoryError as err:
        # O_DIRECTORY|O_NOFOLLOW on a symlink reports ENOTDIR; say what it really is.
        try:
            is_link = stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
        except OSError:
            raise err from None
        if is_link:
            raise OSError(errno.ELOOP, "a symlink, not followed", name) from err
        raise


def open_root(root: str) -> int:
    """Open directory ``root`` (absolute) refusing a symlink in any of its components.

    Raises:
        OSError: with the offending component as ``filename``; ``ELOOP`` when it is a
            symlink, ``ENOTDIR`` when not a directory, ``EINVAL`` for a ``..``.
    """
    parts = PurePosixPath(root).parts[1:]
    if ".." in parts:
        raise OSError(errno.EINVAL, "'..' is not allowed in a root", root)
    fd = os.open("/", _DIR_FLAGS)
    walked = PurePosixPath("/")
    try:
        for part in parts:
            walked /= part
            try:
                child = _open_dir(fd, part)
            except OSError as err:
                raise OSError(err.errno, err.strerror, str(walked)) from err
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def list_files(
    root_fd: int, patterns: Sequence[re.Pattern[str]], *, deadline: float = math.inf
) -> FileListing:
    """Every regular file beneath ``root_fd`` on its filesystem whose path matches a pattern.

    Directories not reached by ``deadline`` (``time.monotonic()``) are passed over.
    """
    walk = _Walk(os.fstat(root_fd).st_dev, patterns, FileListing(), deadline)
    walk.directory(root_fd, "", depth=0)
    return walk.listing


@dataclass(frozen=True, slots=True)
class _Walk:
    root_dev: int
    patterns: Sequence[re.Pattern[str]]
    listing: FileListing
    deadline: float

    def directory(self, fd: int, prefix: str, depth: int) -> None:
        if time.monotonic() > self.deadline:
            self.listing.passed_over[prefix or "."] = "not walked: out of time"
            return
        for entry in self._entries(fd, prefix):
            path = prefix + entry.name
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                self.listing.passed_over[path] = "vanished"
                continue
            if stat.S_ISDIR(info.st_mode):
                if depth + 1 >= _MAX_DEPTH:
                    self.listing.passed_over[path] = f"deeper than {_MAX_DEPTH} levels"
                elif info.st_dev != self.root_dev:
                    self.listing.passed_over[path] = "another filesystem"
                else:
                    self._child(fd, entry.name, path, depth)
            elif not any(pattern.fullmatch(path) for pattern in self.patterns):
                continue
            elif stat.S_ISLNK(info.st_mode):
                self.listing.passed_over[path] = "a symlink"
            elif not stat.S_ISREG(info.st_mode):
                self.listing.passed_over[path] = "not a regular file"
            else:
                self.listing.files.append(
                    ConfinedFile(
                        path=path,
                        dev=info.st_dev,
                        ino=info.st_ino,
                        size=info.st_size,
                        allocated=info.st_blocks * 512,
                        mtime=info.st_mtime,
                        nlink=info.st_nlink,
                    )
                )

    def _entries(self, fd: int, prefix: str) -> Iterator[os.DirEntry[str]]:
        try:
            with os.scandir(fd) as entries:
                yield from entries
        except OSError as err:
            self.listing.passed_over[prefix or "."] = f"unreadable: {err.strerror}"

    def _child(self, fd: int, name: str, path: str, depth: int) -> None:
        try:
            child = _open_dir(fd, name)
        except OSError as err:
            # It became a symlink (or vanished) since it was listed.
            self.listing.passed_over[path] = f"not opened: {err.strerror}"
            return
        try:
            if os.fstat(child).st_dev != self.root_dev:
                self.listing.passed_over[path] = "another filesystem"
                return
            self.directory(child, path + "/", depth + 1)
        finally:
            os.close(child)


def unlink_file(root_fd: int, file: ConfinedFile) -> str | None:
    """Unlink ``file`` if it is still the one listed, never leaving the root.

    Returns:
        None when it was unlinked, else why not (it changed, vanished, or a directory on
        its path is now a symlink).
    """
    *dirs, name = file.path.split("/")
    fd = os.dup(root_fd)
    try:
        for part in dirs:
            try:
                child = _open_dir(fd, part)
            except OSError as err:
                return f"directory {part!r} not opened: {err.strerror}"
            os.close(fd)
            fd = child
        try:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError as err:
            return f"not found: {err.strerror}"
        if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (file.dev, file.ino):
            return "replaced since it was listed"
        try:
            os.unlink(name, dir_fd=fd)
        except OSError as err:
            return f"not unlinked: {err.strerror}"
        return None
    finally:
        os.close(fd)
