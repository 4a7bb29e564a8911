"""Per-process procfs files kept open between runs, each read again with one ``pread``.

Reading ``/proc/PID/cmdline`` and ``/proc/PID/stat`` afresh costs ``open``, ``read`` and
``close``; kept open, a run costs one ``pread`` at offset 0, which the kernel answers
from the process as it is *now*. That is what makes this safe where caching the
*contents* is not:

* ``exec`` keeps the PID and start time but changes the command line: the next read
  of the open file shows the new one.
* A process may rewrite its own command line in place (``setproctitle``: PostgreSQL,
  nginx, sshd); no kernel event reports that, the next read shows it.
* An open procfs file belongs to the process it was opened on (its ``struct pid``),
  not to the number: once that process is reaped, reads fail with ``ESRCH`` even when
  the PID has been handed to a new process. The file is then closed and the PID's
  file opened afresh, which reaches the new process.

The kernel's proc connector (netlink exec/fork/exit events) was the other way to skip
re-reading command lines: it needs CAP_NET_ADMIN, which the shipped unit does not
grant (it runs as the ``nodemedic`` user with CAP_KILL and CAP_SYSLOG only), and it
does not see in-place rewrites, so it would be neither available nor exact.

Held files cost descriptors, about two per watched process. They are moved to numbers
at or above :data:`HELD_FD_FLOOR` so that the rest of the agent keeps numbers a
``select()`` can take, and the open-files soft limit is raised towards the hard limit
to make room (systemd's default hard limit is 524288, the soft one 1024 for such
``select()`` users). When there is no room, files are read afresh as before.
"""

from __future__ import annotations

__all__ = ["HELD_FD_FLOOR", "HeldProcFiles", "KernelFiles", "raise_open_files_limit"]

import fcntl
import logging
import os
import resource
from pathlib import Path

log = logging.getLogger(__name__)

HELD_FD_FLOOR = 1024
"""Held files get descriptor numbers from here up, clear of ``select()``'s range."""

HEADROOM = 1024
"""Descriptors above the floor left free for everything else the agent opens."""

WANTED_LIMIT = 65536
"""The open-files soft limit asked for (bounded by the hard limit)."""

_CHUNK = 4096


def raise_open_files_limit(wanted: int = WANTED_LIMIT) -> int:
    """Raise this process's open-files soft limit towards ``wanted``; the soft limit after.

    Never lowers it, never goes past the hard limit; a refusal (a seccomp filter, a
    container) leaves it as it was.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as err:
            log.info("processes: cannot raise the open-files limit from %d: %s", soft, err)
            return soft
        log.info("processes: raised the open-files soft limit from %d to %d", soft, target)
        return target
    return soft if soft != resource.RLIM_INFINITY else wanted


class HeldProcFiles:
    """Per-process files below one procfs mount, kept open between runs.

    Call :meth:`read` for every file a run needs, then :meth:`sweep` once at the end of
    the run: it closes the files of processes the run did not read (exited, or no longer
    looked at).

    Args:
        proc: where procfs is mounted.
        capacity: the most files held open at once; past it files are read afresh.
    """

    def __init__(self, proc: str, *, capacity: int) -> None:
        self._prefix = f"{proc}/"
        self._capacity = capacity
        self._held: dict[str, dict[int, int]] = {}
        self._count = 0
        self._read: set[int] = set()
        self._full = False

    @property
    def held(self) -> int:
        """How many files are open now."""
        return self._count

    def read(self, pid: int, name: str) -> bytes:
        """The current content of ``/proc/PID/<name>``.

        Raises:
            FileNotFoundError: the process is gone.
            ProcessLookupError: the process is gone (reaped while being read).
            PermissionError: the agent may not read the file.
        """
        self._read.add(pid)
        held = self._held.get(name)
        if held is None:
            held = self._held[name] = {}
        fd = held.get(pid)
        if fd is not None:
            try:
                data = os.pread(fd, _CHUNK, 0)
            except ProcessLookupError:
                # The process this file was opened on was reaped, and the PID may be
                # another's now: open it afresh below.
                self._drop(held, pid, fd)
            except OSError:
                self._drop(held, pid, fd)
                raise
            else:
                return data if len(data) < _CHUNK else _read_rest(fd, data)
        return self._open(pid, name, held)

    def read_all(self, pids: list[int], name: str) -> dict[int, bytes]:
        """``/proc/PID/<name>`` of each PID; a process gone or off limits is left out."""
        self._read.update(pids)
        held = self._held.get(name)
        if held is None:
            held = self._held[name] = {}
        out: dict[int, bytes] = {}
        pread, chunk = os.pread, _CHUNK
        for pid in pids:
            fd = held.get(pid)
            if fd is not None:
                # The common case, inline: one syscall and no further Python call.
                try:
                    data = pread(fd, chunk, 0)
                except OSError:
                    pass  # read() below sorts it out
                else:
                    if len(data) < chunk:
                        out[pid] = data
                        continue
            try:
                out[pid] = self.read(pid, name)
            except (FileNotFoundError, ProcessLookupError, PermissionError) as err:
                log.debug("processes: skipping pid %d: %s", pid, err)
        return out

    def sweep(self) -> None:
        """Close the files of every process not read since the previous sweep."""
        read = self._read
        for held in self._held.values():
            for pid in held.keys() - read:
                self._drop(held, pid, held[pid])
        self._read = set()

    def close(self) -> None:
        """Close every held file."""
        for held in self._held.values():
            for fd in held.values():
                os.close(fd)
            held.clear()
        self._count = 0

    def _open(self, pid: int, name: str, held: dict[int, int]) -> bytes:
        fd = os.open(f"{self._prefix}{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            high = self._hold(fd)
        except BaseException:
            os.close(fd)
            raise
        if high is None:
            try:
                return _read_rest(fd, os.read(fd, _CHUNK))
            finally:
                os.close(fd)
        os.close(fd)
        held[pid] = high
        self._count += 1
        data = os.pread(high, _CHUNK, 0)
        return data if len(data) < _CHUNK else _read_rest(high, data)

    def _hold(self, fd: int) -> int | None:
        """A duplicate of ``fd`` numbered at or above the floor; None when there is no room."""
        if self._count >= self._capacity:
            self._report_full(f"{self._count} files held, the most allowed")
            return None
        try:
            high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, HELD_FD_FLOOR)
        except OSError as err:  # EMFILE, EINVAL: no number that high under the limit
            self._report_full(str(err))
            return None
        return high

    def _report_full(self, why: str) -> None:
        # Said once: at the limit, files of short-lived processes come and go every run.
        if not self._full:
            log.info(
                "processes: no room to keep more process files open (%s); "
                "reading the others afresh each run",
                why,
            )
            self._full = True

    def _drop(self, held: dict[int, int], pid: int, fd: int) -> None:
        del held[pid]
        self._count -= 1
        os.close(fd)


class KernelFiles:
    """System-wide kernel files (``/proc/stat``, ``/proc/meminfo``...) kept open between
    runs, each read again with ``pread`` from offset 0.

    The kernel generates such a file afresh for every read from offset 0, exactly as
    for a fresh ``open``; keeping it open saves the path lookup, ``open`` and ``close``
    (and pathlib's work on the name), about half the cost of reading a small one. A
    file that fails is closed, and opened afresh on the next read.
    """

    def __init__(self) -> None:
        self._held: dict[Path, int] = {}

    def read(self, path: Path) -> str:
        """The whole current content of ``path``, decoded as a kernel file is.

        Raises:
            OSError: carrying the path, as ``open`` raises it.
        """
        fd = self._held.get(path)
        if fd is None:
            fd = self._held[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            # A seq_file read returns at most its buffer (a page or so): read to the end.
            data = os.pread(fd, _WHOLE, 0)
            offset = len(data)
            while offset and (chunk := os.pread(fd, _WHOLE, offset)):
                data += chunk
                offset += len(chunk)
        except OSError as err:
            del self._held[path]
            os.close(fd)
            raise OSError(err.errno, err.strerror, str(path)) from err
        return data.decode("utf-8", "surrogateescape")

    def close(self) -> None:
        """Close every held file."""
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()


_WHOLE = 65536


def _read_rest(fd: int, first: bytes) -> bytes:
    """``first`` (read from offset 0) and whatever follows it in the file."""
    if len(first) < _CHUNK:
        return first
    parts = [first]
    offset = len(first)
    while chunk := os.pread(fd, 16 * _CHUNK, offset):
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)
