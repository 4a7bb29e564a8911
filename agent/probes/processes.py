"""Process groups: count, CPU, memory, descriptors, threads, zombies, restarts and age.

One pass over procfs per run serves every configured group, and it reads only what the
groups need: ``/proc/PID/stat`` for groups matched by ``comm`` (it holds the name as well
as every figure the probe reports), the owner of ``/proc/PID`` for ``user``, and
``cmdline`` only for processes that passed a group's other matchers. Groups given by a
``pidfile`` or a systemd ``unit`` (the processes listed in its cgroup) need no scan at
all. Only members get their descriptors counted, and at most every ``FD_REFRESH``
seconds each (a new member at once): the counts move slowly and cost more than the rest.

On a live procfs each process's ``stat`` and ``cmdline`` stay open between runs and
are read again with one ``pread`` (``agent.probes.proc_files`` says why that is exact
where caching command lines is not: ``exec``, in-place title rewrites, PID reuse).

A process that exits mid-run, or that the agent may not inspect, is skipped (debug log):
on a busy host that happens every run and is not a failure.
"""

from __future__ import annotations

__all__ = ["FD_REFRESH", "ProcessesProbe"]

import logging
import os
import pwd
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent.model import LabelSet, Sample, labelset
from agent.probes.base import BlockingProbe, Clock
from agent.probes.proc_files import (
    HEADROOM,
    HELD_FD_FLOOR,
    HeldProcFiles,
    raise_open_files_limit,
)
from agent.probes.procfs_reader import (
    ProcReader,
    ProcStat,
    cgroup_pids,
    comm_of,
    decode_cmdline,
    is_procfs,
    parse_stat,
    read_pidfile,
)

if TYPE_CHECKING:
    # agent.config imports the catalog, and so this package: only types at run time.
    from agent.config import ProcessGroupConfig

log = logging.getLogger(__name__)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")

FD_REFRESH = 10.0
"""Seconds a member's descriptor count and limit are reused before being read again."""

_Key = tuple[int, int]
"""A process identity that survives PID reuse: (pid, start time in ticks)."""

_GONE = (FileNotFoundError, ProcessLookupError)
"""What reading a process that exited raises (ESRCH for a zombie's or a dying task's files)."""


@dataclass(slots=True)
class _Group:
    """A configured group, compiled, with what it remembers between runs."""

    config: ProcessGroupConfig
    labels: LabelSet
    comm: bytes | None
    cmdline: re.Pattern[str] | None
    uid: int | None = None
    last_members: frozenset[_Key] = frozenset()
    restarts: int = 0
    problems: dict[str, str] = field(default_factory=dict)
    scanned: bool = field(init=False)

    def __post_init__(self) -> None:
        self.scanned = self.config.pidfile is None and self.config.unit is None


@dataclass(slots=True)
class _Run:
    """What one run has read so far, shared by every group."""

    now: float
    stats: dict[int, bytes] = field(default_factory=dict)
    parsed: dict[int, tuple[bytes, ProcStat]] = field(default_factory=dict)
    cmdlines: dict[int, tuple[bytes, str]] = field(default_factory=dict)
    uids: dict[int, int] = field(default_factory=dict)
    ticks: dict[_Key, int] = field(default_factory=dict)
    fds: dict[_Key, tuple[int, int | None, float]] = field(default_factory=dict)


class ProcessesProbe(BlockingProbe):
    """Emits the ``nodemedic_process_group_*`` series for each configured group.

    Args:
        groups: the configured groups (none: the probe reads nothing and emits nothing).
        interval: seconds between runs.
        timeout: seconds one run may take.
        proc: where procfs is mounted (a fixture tree in tests).
        cgroup: where the cgroup hierarchies are mounted, for ``unit`` groups.
        clock: monotonic seconds.
        hold_files: keep each process's ``stat`` and ``cmdline`` open between runs;
            None: when ``proc`` is a live procfs and there are groups.
        fd_refresh: seconds a member's descriptor count and limit are reused.
    """

    def __init__(
        self,
        *,
        groups: Sequence[ProcessGroupConfig] = (),
        interval: float = 10.0,
        timeout: float = 10.0,
        proc: Path = Path("/proc"),
        cgroup: Path = Path("/sys/fs/cgroup"),
        clock: Clock = time.monotonic,
        hold_files: bool | None = None,
        fd_refresh: float = FD_REFRESH,
    ) -> None:
        super().__init__(name="processes", interval=interval, timeout=timeout, clock=clock)
        if hold_files is None:
            hold_files = bool(groups) and is_procfs(proc)
        self._files: HeldProcFiles | None = None
        if hold_files:
            capacity = raise_open_files_limit() - HELD_FD_FLOOR - HEADROOM
            self._files = HeldProcFiles(str(proc), capacity=max(0, capacity))
        self._reader = ProcReader(proc, files=self._files)
        self._fd_refresh = fd_refresh
        self._cgroup = cgroup
        self._groups = [
            _Group(
                config=group,
                labels=labelset(group=group.name),
                comm=group.comm.encode() if group.comm is not None else None,
                cmdline=re.compile(group.cmdline) if group.cmdline is not None else None,
            )
            for group in groups
        ]
        # With no group a run reads nothing: no thread to hand it to.
        self._inline = not self._groups
        self._previous_ticks: dict[_Key, int] = {}
        self._previous_fds: dict[_Key, tuple[int, int | None, float]] = {}
        self._previous_uptime: float | None = None
        self._previous_run = _Run(now=0.0)

    def collect(self) -> list[Sample]:
        """One pass over procfs, then each group's figures."""
        if not self._groups:
            return []
        uptime = self._reader.uptime()
        run = _Run(now=self._clock())
        members = self._members(run)
        samples: list[Sample] = []
        for group, pids in zip(self._groups, members, strict=True):
            samples.extend(self._measure(group, pids, run, uptime))
        self._previous_ticks = run.ticks
        self._previous_fds = run.fds
        self._previous_uptime = uptime
        self._previous_run = run
        if self._files is not None:
            self._files.sweep()
        return samples

    def close(self) -> None:
        """Stop the probe; its held files are closed once no run uses them."""
        super().close()
        files = self._files
        if files is None:
            return
        running = self._running
        if running is None:
            files.close()
        else:
            # A run in progress reads them: close them in its thread when it ends (at
            # once, here, when it already has).
            running.add_done_callback(lambda _: files.close())

    def _members(self, run: _Run) -> list[list[int]]:
        """Each group's member PIDs, in the order of the groups."""
        found: list[list[int]] = []
        listed: list[int] | None = None
        for group in self._groups:
            self._resolve_user(group)
            if not group.scanned:
                found.append(self._narrow(group, self._sourced(group), run))
            elif _can_match(group):
                if listed is None:
                    listed = self._reader.pids()
                found.append(self._narrow(group, listed, run))
            else:
                found.append([])
        return found

    def _narrow(self, group: _Group, pids: list[int], run: _Run) -> list[int]:
        """The PIDs that pass each of the group's matchers.

        Cheapest test first (the owner is one stat(2), stat is reused for a member's
        figures, cmdline is the dearest); each file is read at most once per run, and
        for all the processes still in question at once.
        """
        if group.config.user is not None:
            pids = [pid for pid in pids if self._uid(pid, run) == group.uid]
        if group.comm is not None:
            stats = self._stats(pids, run)
            pids = [pid for pid in pids if pid in stats and comm_of(stats[pid]) == group.comm]
        if group.cmdline is not None:
            lines = self._cmdlines(pids, run)
            search = group.cmdline.search
            pids = [pid for pid in pids if pid in lines and search(lines[pid][1]) is not None]
        return pids

    def _uid(self, pid: int, run: _Run) -> int | None:
        uid = run.uids.get(pid)
        if uid is None:
            try:
                uid = run.uids[pid] = self._reader.effective_uid(pid)
            except (*_GONE, PermissionError) as err:
                log.debug("processes: skipping pid %d: %s", pid, err)
        return uid

    def _stats(self, pids: list[int], run: _Run) -> dict[int, bytes]:
        """Raw ``stat`` of the PIDs still running, read once per run (with others')."""
        stats = run.stats
        missing = [pid for pid in pids if pid not in stats]
        if missing:
            stats.update(self._reader.read_all(missing, "stat"))
        return stats

    def _cmdlines(self, pids: list[int], run: _Run) -> dict[int, tuple[bytes, str]]:
        """Raw and decoded ``cmdline`` of the PIDs still running; decoded when it changed."""
        lines = run.cmdlines
        missing = [pid for pid in pids if pid not in lines]
        if missing:
            known = self._previous_run.cmdlines
            for pid, raw in self._reader.read_all(missing, "cmdline").items():
                line = known.get(pid)
                if line is None or line[0] != raw:
                    line = (raw, decode_cmdline(raw))
                lines[pid] = line
        return lines

    def _sourced(self, group: _Group) -> list[int]:
        """The PIDs of a pidfile or unit group; an empty list when it is not running."""
        config = group.config
        pids: list[int] | None = []
        problem: str | None = None
        try:
            if config.pidfile is not None:
                pids = [read_pidfile(config.pidfile)]
            elif config.unit is not None:
                pids = cgroup_pids(self._cgroup, config.unit)
        except FileNotFoundError:
            pids = []  # no pidfile: not running
        except (OSError, ValueError) as err:
            problem = str(err)
        _report_problem(group, "membership", problem)
        return list(dict.fromkeys(pids or ()))  # cgroup v1 may list a PID twice

    def _resolve_user(self, group: _Group) -> None:
        user = group.config.user
        if user is None or group.uid is not None:
            return
        if user.isdigit():
            group.uid = int(user)
            return
        try:
            group.uid = pwd.getpwnam(user).pw_uid
        except KeyError:
            # A service user may be created after the agent starts: retried every run.
            _report_problem(group, "user", f"unknown user {user!r}; the group matches nothing")
        else:
            _report_problem(group, "user", None)

    def _measure(self, group: _Group, pids: list[int], run: _Run, uptime: float) -> list[Sample]:
        # The hottest loop of the probe (once per member per run): locals, no calls in
        # the common case.
        tally = _Tally()
        born_after = (self._previous_uptime or 0.0) * CLOCK_TICKS
        stats = self._stats(pids, run)
        known, parsed = self._previous_run.parsed, run.parsed
        previous_ticks, ticks = self._previous_ticks, run.ticks
        keys = tally.keys
        threads = zombies = rss_pages = new_ticks = 0
        oldest: int | None = None
        for pid in pids:
            raw = stats.get(pid)
            if raw is None:
                continue  # gone
            # An idle process's stat is the same bytes run after run: parsed once.
            old = parsed.get(pid) or known.get(pid)
            if old is None or old[0] != raw:
                old = (raw, parse_stat(raw))
            parsed[pid] = old
            stat = old[1]
            key = (pid, stat.start)
            keys.add(key)
            ticks[key] = stat.ticks
            before = previous_ticks.get(key)
            if before is not None:
                if stat.ticks > before:
                    new_ticks += stat.ticks - before
            elif stat.start >= born_after:
                new_ticks += stat.ticks  # started since the previous run: all of it is new
            threads += stat.threads
            rss_pages += stat.rss_pages
            if stat.state == b"Z":
                zombies += 1
            if oldest is None or stat.start < oldest:
                oldest = stat.start
        tally.threads, tally.zombies, tally.rss_pages = threads, zombies, rss_pages
        tally.ticks, tally.oldest = new_ticks, oldest
        self._count_descriptors(keys, run, tally)
        current = frozenset(keys)
        if group.last_members and current - group.last_members:
            group.restarts += 1
        if current:
            group.last_members = current
        return self._samples(group, tally, uptime)

    def _count_descriptors(self, keys: set[_Key], run: _Run, tally: _Tally) -> None:
        """Add the members' descriptors and their highest use of the limit to ``tally``."""
        previous_fds, fds, now, refresh = self._previous_fds, run.fds, run.now, self._fd_refresh
        counted = False
        open_fds, ratio = 0, 0.0
        for key in keys:
            descriptors = previous_fds.get(key)
            if descriptors is not None and now - descriptors[2] < refresh:
                fds[key] = descriptors  # the common case, inline
            else:
                descriptors = self._descriptors(key, run)
                if descriptors is None:
                    continue
            counted = True
            open_fds += descriptors[0]
            limit = descriptors[1]
            if limit and descriptors[0] / limit > ratio:
                ratio = descriptors[0] / limit
        if counted:
            tally.fds, tally.fds_ratio = open_fds, ratio

    def _descriptors(self, key: _Key, run: _Run) -> tuple[int, int | None, float] | None:
        """A member's open descriptors and NOFILE limit, read now; None when unreadable.

        They are the dearest figures after the scan itself and move slowly, so
        ``_count_descriptors`` reuses them for ``fd_refresh`` seconds; a process seen for the
        first time is read at once.
        """
        now = run.now
        pid = key[0]
        try:
            open_fds = self._reader.fd_count(pid)
            limit = self._reader.nofile_limit(pid)
        except (OSError, ValueError) as err:
            log.debug("processes: no descriptors for pid %d: %s", pid, err)
            return None
        descriptors = run.fds[key] = (open_fds, limit, now)
        return descriptors

    def _samples(self, group: _Group, tally: _Tally, uptime: float) -> list[Sample]:
        config, labels = group.config, group.labels
        rss = tally.rss_pages * PAGE_BYTES
        out = [
            Sample("nodemedic_process_group_processes", float(len(tally.keys)), labels),
            Sample(
                "nodemedic_process_group_missing",
                float(len(tally.keys) < config.min_count),
                labels,
            ),
            Sample("nodemedic_process_group_rss_bytes", float(rss), labels),
            Sample("nodemedic_process_group_threads", float(tally.threads), labels),
            Sample("nodemedic_process_group_zombies", float(tally.zombies), labels),
            Sample("nodemedic_process_group_restarts_total", float(group.restarts), labels),
        ]
        elapsed = uptime - self._previous_uptime if self._previous_uptime is not None else 0.0
        if elapsed > 0:
            cores = tally.ticks / CLOCK_TICKS / elapsed
            out.append(Sample("nodemedic_process_group_cpu_cores", cores, labels))
        if config.max_rss_bytes is not None:
            over = float(rss > config.max_rss_bytes)
            out.append(Sample("nodemedic_process_group_rss_over_limit", over, labels))
        if tally.fds is not None:
            out.append(Sample("nodemedic_process_group_fds", float(tally.fds), labels))
            out.append(Sample("nodemedic_process_group_fds_limit_ratio", tally.fds_ratio, labels))
        if tally.oldest is not None:
            age = max(0.0, uptime - tally.oldest / CLOCK_TICKS)
            out.append(Sample("nodemedic_process_group_oldest_age_seconds", age, labels))
        return out


@dataclass(slots=True)
class _Tally:
    """One group's figures, summed over its members during a run."""

    keys: set[_Key] = field(default_factory=set)
    threads: int = 0
    zombies: int = 0
    rss_pages: int = 0
    ticks: int = 0
    oldest: int | None = None
    fds: int | None = None
    fds_ratio: float = 0.0


def _can_match(group: _Group) -> bool:
    return group.config.user is None or group.uid is not None


def _report_problem(group: _Group, aspect: str, problem: str | None) -> None:
    """Log a group's problem with one aspect (its user, its membership) on transitions only."""
    if problem == group.problems.get(aspect):
        return
    name = group.config.name
    if problem is not None:
        log.warning("processes: group %s: %s", name, problem)
        group.problems[aspect] = problem
    else:
        log.info("processes: group %s: %s resolved again", name, aspect)
        del group.problems[aspect]
