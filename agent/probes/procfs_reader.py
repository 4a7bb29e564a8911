"""Minimal, fast reads of per-process files under procfs, for the processes probe.

This is the agent's hottest path: every read is one ``open``/``read``/``close`` on raw
bytes (no buffered file objects, no decoding) and parses only the fields asked for.
A process can exit between any two reads: those reads raise ``FileNotFoundError`` or
``ProcessLookupError`` (and ``PermissionError`` where the agent may not look), which the
caller treats as normal.

On a live procfs a run's ``stat`` and ``cmdline`` reads go through files kept open
between runs when the caller hands over ``HeldProcFiles`` (one ``pread`` each instead
of three calls), and two cheaper sources replace file reads where the kernel offers them:
the size ``stat(2)`` reports for ``/proc/PID/fd`` is the number of open descriptors
(Linux 6.2 and later), and ``prlimit(2)`` gives a process's RLIMIT_NOFILE when ``proc``
is the agent's own PID namespace. A fixture tree gets neither and is read as files.
"""

# The hot path keeps paths as str and calls os directly: a Path per read costs more
# than the read itself.
# ruff: noqa: PTH116, PTH208

from __future__ import annotations

__all__ = [
    "ProcReader",
    "ProcStat",
    "cgroup_pids",
    "comm_of",
    "decode_cmdline",
    "is_procfs",
    "parse_stat",
    "read_bytes",
    "read_pidfile",
]

import logging
import os
import resource
from dataclasses import dataclass
from pathlib import Path

from agent.probes.proc_files import HeldProcFiles

log = logging.getLogger(__name__)

_CHUNK = 4096
# Fields after "pid (comm) ", counted from 0: state is field 3 of proc_pid_stat(5).
_STATE, _UTIME, _STIME, _THREADS, _START, _RSS = 0, 11, 12, 17, 19, 21
_UNLIMITED = "unlimited"


def read_bytes(path: str) -> bytes:
    """Read a whole (small) file as bytes with raw syscalls.

    Raises:
        OSError: as ``open`` or ``read`` raise it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, _CHUNK)
        if len(data) < _CHUNK:
            return data
        parts = [data]
        while chunk := os.read(fd, 64 * _CHUNK):
            parts.append(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` the probe uses.

    Attributes:
        state: the one-letter state (``b"R"``, ``b"S"``, ``b"Z"``...).
        ticks: user plus system CPU time, in clock ticks.
        threads: number of threads.
        start: start time after boot, in clock ticks (with the PID, identifies a process).
        rss_pages: resident set size, in pages.
    """

    state: bytes
    ticks: int
    threads: int
    start: int
    rss_pages: int


def comm_of(stat: bytes) -> bytes:
    """The process name from raw ``stat`` content: between the first ``(`` and last ``)``."""
    return stat[stat.find(b"(") + 1 : stat.rfind(b")")]


def parse_stat(stat: bytes) -> ProcStat:
    """Parse raw ``/proc/PID/stat`` content.

    Raises:
        ValueError: when the content is not a stat line (too short, not numbers).
    """
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return ProcStat(
            state=fields[_STATE],
            ticks=int(fields[_UTIME]) + int(fields[_STIME]),
            threads=int(fields[_THREADS]),
            start=int(fields[_START]),
            rss_pages=int(fields[_RSS]),
        )
    except IndexError:
        raise ValueError(f"stat has {len(fields)} fields after the name") from None


def decode_cmdline(raw: bytes) -> str:
    """Raw ``cmdline`` content as text, the arguments joined by spaces."""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "surrogateescape")


class ProcReader:
    """Reads per-process files below one procfs mount.

    Args:
        proc: where procfs is mounted (a fixture tree in tests).
        files: where ``stat`` and ``cmdline`` are read from instead of fresh opens
            (a live procfs only: a fixture file kept open would outlive its removal).
    """

    def __init__(self, proc: Path, *, files: HeldProcFiles | None = None) -> None:
        self.proc = proc
        self._prefix = f"{proc}/"
        self._files = files
        self._fd_count_in_size = _counts_fds_in_size(proc)
        self._own_namespace = _is_own_namespace(proc)

    def pids(self) -> list[int]:
        """Every process ID listed in procfs.

        Raises:
            OSError: when procfs cannot be listed.
        """
        return [int(name) for name in os.listdir(self._prefix) if name.isdigit()]

    def read_all(self, pids: list[int], name: str) -> dict[int, bytes]:
        """``/proc/PID/<name>`` of each PID; a process gone or off limits is left out."""
        if self._files is not None:
            return self._files.read_all(pids, name)
        out: dict[int, bytes] = {}
        for pid in pids:
            try:
                out[pid] = read_bytes(f"{self._prefix}{pid}/{name}")
            except (FileNotFoundError, ProcessLookupError, PermissionError) as err:
                log.debug("processes: skipping pid %d: %s", pid, err)
        return out

    def uptime(self) -> float:
        """Seconds since boot, from ``uptime``.

        Raises:
            OSError: when it cannot be read.
            ValueError: when it is malformed.
        """
        raw = read_bytes(self._prefix + "uptime")
        try:
            return float(raw.split()[0])
        except (IndexError, ValueError):
            raise ValueError(f"cannot parse {self._prefix}uptime: {raw!r}") from None

    def stat(self, pid: int) -> bytes:
        """Raw ``/proc/PID/stat``."""
        if self._files is not None:
            return self._files.read(pid, "stat")
        return read_bytes(f"{self._prefix}{pid}/stat")

    def cmdline(self, pid: int) -> str:
        """The command line with arguments joined by spaces (empty for kernel threads)."""
        return decode_cmdline(self.cmdline_bytes(pid))

    def cmdline_bytes(self, pid: int) -> bytes:
        """Raw ``/proc/PID/cmdline``: the arguments, each ended by a NUL."""
        if self._files is not None:
            return self._files.read(pid, "cmdline")
        return read_bytes(f"{self._prefix}{pid}/cmdline")

    def effective_uid(self, pid: int) -> int:
        """The effective UID of the process.

        The kernel always gives ``/proc/PID`` itself the task's effective UID as owner
        (even for a non-dumpable task, unlike the files inside), so one ``stat(2)``
        replaces parsing ``/proc/PID/status``.
        """
        return os.stat(f"{self._prefix}{pid}").st_uid

    def fd_count(self, pid: int) -> int:
        """Open file descriptors of the process."""
        path = f"{self._prefix}{pid}/fd"
        if self._fd_count_in_size:
            return os.stat(path).st_size  # 0 is real here: a kernel thread, a zombie
        return len(os.listdir(path))

    def nofile_limit(self, pid: int) -> int | None:
        """The soft RLIMIT_NOFILE of the process; None when unlimited.

        Raises:
            ValueError: when the limits file has no "Max open files" line.
        """
        if self._own_namespace:
            try:
                soft = resource.prlimit(pid, resource.RLIMIT_NOFILE)[0]
            except PermissionError:
                pass  # needs CAP_SYS_RESOURCE or the same user; the file needs neither
            else:
                return None if soft == resource.RLIM_INFINITY else soft
        raw = read_bytes(f"{self._prefix}{pid}/limits")
        start = raw.find(b"Max open files")
        if start < 0:
            raise ValueError(f"no 'Max open files' line in {self._prefix}{pid}/limits")
        soft_text = raw[start + 14 : raw.find(b"\n", start)].split()[0].decode()
        return None if soft_text == _UNLIMITED else int(soft_text)


def read_pidfile(path: Path) -> int:
    """The PID written in a pidfile.

    Raises:
        OSError: when the file cannot be read (``FileNotFoundError``: not running).
        ValueError: when it does not hold a positive number.
    """
    raw = read_bytes(str(path))
    text = raw.split(maxsplit=1)[0] if raw.strip() else b""
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"pidfile {path} does not hold a PID: {raw[:40]!r}")
    return int(text)


_HIERARCHIES = ("", "unified/", "systemd/")
"""Where a unit's cgroup lives below the cgroup root: pure v2, hybrid v2, v1 name=systemd."""


def cgroup_pids(root: Path, unit: str) -> list[int] | None:
    """Every process in the unit's cgroup and its sub-cgroups; None when it has no cgroup.

    ``unit`` is a unit name, looked up under ``system.slice``, or a path below the
    cgroup root (``user.slice/user@1000.service``). systemd removes a unit's cgroup when
    the unit stops, so None means the unit is not running.

    Raises:
        OSError: when the cgroup exists but cannot be read.
    """
    relative = unit if "/" in unit else f"system.slice/{unit}"
    for hierarchy in _HIERARCHIES:
        top = f"{root}/{hierarchy}{relative}"
        try:
            raw = read_bytes(f"{top}/cgroup.procs")
        except FileNotFoundError:
            continue
        pids = [int(line) for line in raw.split()]
        _collect_children(top, pids)
        return pids
    return None


def _collect_children(directory: str, pids: list[int]) -> None:
    try:
        entries = [entry.path for entry in os.scandir(directory) if entry.is_dir()]
    except FileNotFoundError:
        return  # removed while we looked: its processes went with it
    for child in entries:
        try:
            pids.extend(int(line) for line in read_bytes(f"{child}/cgroup.procs").split())
        except FileNotFoundError:
            continue
        _collect_children(child, pids)


def is_procfs(proc: Path) -> bool:
    """Whether ``proc`` is the root of a procfs mount, not a fixture tree.

    procfs's root is inode 1 and lists ``self`` (a symlink, dangling when the mount
    belongs to another PID namespace).
    """
    try:
        return os.stat(proc).st_ino == 1 and os.path.lexists(f"{proc}/self")
    except OSError:
        return False


def _counts_fds_in_size(proc: Path) -> bool:
    try:
        return (proc / "self" / "fd").stat().st_size > 0
    except OSError:
        return False


def _is_own_namespace(proc: Path) -> bool:
    try:
        return str((proc / "self").readlink()) == str(os.getpid())
    except OSError:
        return False
