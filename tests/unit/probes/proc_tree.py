"""A fixture procfs tree of processes, written in the kernel's own formats."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_LIMITS = """\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max file size             unlimited            unlimited            bytes     
Max stack size            8388608              unlimited            bytes     
Max processes             96364                96364                processes 
Max open files            {nofile:<20} 524288               files     
Max locked memory         8388608              8388608              bytes     
"""  # noqa: W291 (procfs pads every column with spaces, the last one included)


@dataclass(frozen=True, slots=True)
class FakeProcess:
    """One process of a fixture tree.

    Attributes:
        pid: its PID.
        comm: the name the kernel shows in ``stat`` (at most 15 bytes).
        cmdline: the arguments; empty for a kernel thread.
        state: one letter, ``Z`` for a zombie.
        utime: user CPU ticks.
        stime: system CPU ticks.
        threads: number of threads.
        start: start time after boot, in ticks.
        rss_pages: resident pages.
        fds: open descriptors (files under ``fd/``).
        nofile: the soft open-files limit, or ``unlimited``.
    """

    pid: int
    comm: str
    cmdline: tuple[str, ...] = ()
    state: str = "S"
    utime: int = 0
    stime: int = 0
    threads: int = 1
    start: int = 100
    rss_pages: int = 0
    fds: int = 3
    nofile: int | str = 1024


def stat_line(process: FakeProcess) -> str:
    """``/proc/PID/stat`` as the kernel prints it (52 fields)."""
    p = process
    return (
        f"{p.pid} ({p.comm}) {p.state} 1 {p.pid} {p.pid} 0 -1 4194560 99 0 0 0 "
        f"{p.utime} {p.stime} 0 0 20 0 {p.threads} 0 {p.start} 3133440 {p.rss_pages} "
        "18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 1 1 1 1 1 1 1 0\n"
    )


def write_process(proc: Path, process: FakeProcess) -> Path:
    """Write (or rewrite) one process below ``proc``; returns its directory."""
    directory = proc / str(process.pid)
    (directory / "fd").mkdir(parents=True, exist_ok=True)
    (directory / "stat").write_text(stat_line(process), encoding="utf-8")
    args = "".join(f"{arg}\0" for arg in process.cmdline)
    (directory / "cmdline").write_text(args, encoding="utf-8")
    (directory / "limits").write_text(_LIMITS.format(nofile=process.nofile), encoding="utf-8")
    for old in (directory / "fd").iterdir():
        old.unlink()
    for fd in range(process.fds):
        (directory / "fd" / str(fd)).symlink_to("/dev/null")
    return directory


def remove_process(proc: Path, pid: int) -> None:
    """Make a process vanish from the tree."""
    directory = proc / str(pid)
    for path in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
    directory.rmdir()


def write_uptime(proc: Path, seconds: float) -> None:
    """Set the tree's ``uptime``."""
    proc.mkdir(parents=True, exist_ok=True)
    (proc / "uptime").write_text(f"{seconds:.2f} 1.00\n", encoding="utf-8")


def own_uid() -> int:
    """The UID that owns the directories the test writes."""
    return os.getuid()
