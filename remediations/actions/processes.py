"""Finding the processes of a process group, as the process-groups probe matches them.

A :class:`ProcessMatch` names processes by any of ``comm``, ``cmdline``, ``pidfile``,
``user``, ``unit`` (the keys of a ``processes`` probe group), explicit ``pids``, or the
name of a configured probe ``group``; given several, a process must satisfy them all.
Each process found is a :class:`ProcessRef`: its PID *and* its start time (field 22 of
``/proc/PID/stat``), so a PID reused by a new process is never mistaken for it.
Kernel threads and zombies are never matched. Reads only ``/proc`` and the cgroup tree,
both constructor boundaries of the action.
"""

from __future__ import annotations

__all__ = ["ProcessMatch", "ProcessRef", "ProcessTable", "parse_stat", "resolve_group"]

import os
import pwd
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from remediations.actions.fields import absolute_path

_PF_KTHREAD = 0x00200000
_UNIT = re.compile(r"[A-Za-z0-9:_.\\@-]+\.(service|scope|slice|socket|mount|swap)")
_MAX_CGROUP_DEPTH = 8


class ProcessMatch(BaseModel):
    """Which processes: every criterion given must hold (at least one is required).

    Attributes:
        comm: the process name (``/proc/PID/comm``) or its program's base name.
        cmdline: a regular expression searched in the command line (arguments joined
            by spaces).
        pidfile: an absolute path to a file holding one PID.
        user: the owner, a user name or a numeric uid.
        unit: a systemd unit; its processes are its cgroup's (and sub-cgroups').
        pids: explicit PIDs.
        group: the members of the ``processes`` probe's group of that name
            (``probes.processes.groups``), matched by that group's criteria; resolved
            through ``ActionServices.process_groups`` (see :func:`resolve_group`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    group: str | None = Field(default=None, min_length=1)
    comm: str | None = Field(default=None, min_length=1)
    cmdline: str | None = Field(default=None, min_length=1)
    pidfile: str | None = None
    user: str | int | None = None
    unit: str | None = None
    pids: tuple[int, ...] | None = Field(default=None, min_length=1)

    _pidfile_absolute = field_validator("pidfile")(absolute_path)

    @field_validator("cmdline")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"invalid regular expression {value!r}: {err}") from err
        return value

    @field_validator("unit")
    @classmethod
    def _unit_name(cls, value: str) -> str:
        # A path below the cgroup root (user.slice/user@1000.service) as probe groups allow.
        parts = value.split("/")
        if not _UNIT.fullmatch(parts[-1]) or any(p in ("", ".", "..") for p in parts):
            raise ValueError(
                f"{value!r} is not a systemd unit name (e.g. nginx.service) or a cgroup "
                "path below the root ending in one (user.slice/user@1000.service)"
            )
        return value

    @field_validator("pids")
    @classmethod
    def _positive_pids(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(pid <= 0 for pid in value):
            raise ValueError("PIDs are positive integers")
        return value

    @model_validator(mode="after")
    def _at_least_one(self) -> ProcessMatch:
        if all(getattr(self, key) is None for key in type(self).model_fields):
            raise ValueError("give at least one of group, comm, cmdline, pidfile, user, unit, pids")
        return self

    @property
    def criteria(self) -> ProcessMatch | None:
        """This match without ``group``; None when ``group`` was its only criterion."""
        rest = self.model_dump(exclude_none=True, exclude={"group"})
        return ProcessMatch.model_validate(rest) if rest else None

    def describe(self) -> str:
        """The criteria as ``key=value`` pairs."""
        return " ".join(f"{k}={v}" for k, v in self.model_dump(exclude_none=True).items())


@dataclass(frozen=True, slots=True)
class ProcessRef:
    """One process, identified across PID reuse.

    Attributes:
        pid: its PID.
        starttime: when it started, in clock ticks since boot.
        name: its ``comm``, for reports.
    """

    pid: int
    starttime: int
    name: str


@dataclass(frozen=True, slots=True)
class StatFields:
    """The fields of ``/proc/PID/stat`` the actions need."""

    name: str
    state: str
    ppid: int
    flags: int
    starttime: int


def parse_stat(text: str) -> StatFields:
    """Parse ``/proc/PID/stat`` (the name may itself contain spaces and parentheses).

    Raises:
        ValueError: when the text is not a stat line.
    """
    open_at, close_at = text.index("("), text.rindex(")")
    fields = text[close_at + 2 :].split()
    # fields[0] is field 3 (state); starttime is field 22.
    return StatFields(
        name=text[open_at + 1 : close_at],
        state=fields[0],
        ppid=int(fields[1]),
        flags=int(fields[6]),
        starttime=int(fields[19]),
    )


class ProcessTable:
    """Reads processes from a ``/proc`` and a cgroup tree.

    Args:
        proc: the procfs mount.
        cgroup_root: the cgroup filesystem root (v2, or v1/hybrid with ``unified``
            and ``systemd`` hierarchies under it).
    """

    def __init__(self, *, proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")):
        self._proc = proc
        self._cgroup_root = cgroup_root

    def stat(self, pid: int) -> StatFields | None:
        """The process's stat fields, or None when it is gone."""
        try:
            return parse_stat((self._proc / str(pid) / "stat").read_text())
        except (OSError, ValueError):
            return None

    def alive(self, ref: ProcessRef) -> bool:
        """Whether that very process still runs (not a zombie, not a reused PID)."""
        fields = self.stat(ref.pid)
        return fields is not None and fields.starttime == ref.starttime and fields.state != "Z"

    def find(self, match: ProcessMatch) -> list[ProcessRef]:
        """The live processes ``match`` names, by PID.

        Raises:
            OSError: when the pidfile cannot be read (with its path).
            ValueError: when the pidfile does not hold a PID, the user is unknown, or the
                unit has no cgroup.
        """
        pids = self._candidates(match)
        uid = _uid(match.user) if match.user is not None else None
        pattern = re.compile(match.cmdline) if match.cmdline is not None else None
        found = []
        for pid in sorted(pids):
            ref = self._check(pid, match, uid, pattern)
            if ref is not None:
                found.append(ref)
        return found

    def _candidates(self, match: ProcessMatch) -> set[int]:
        sets: list[set[int]] = []
        if match.pids is not None:
            sets.append(set(match.pids))
        if match.pidfile is not None:
            sets.append({_read_pidfile(match.pidfile)})
        if match.unit is not None:
            sets.append(self._unit_pids(match.unit))
        if not sets:
            sets.append(
                {int(entry.name) for entry in os.scandir(self._proc) if entry.name.isdigit()}
            )
        return set.intersection(*sets)

    def _check(
        self, pid: int, match: ProcessMatch, uid: int | None, pattern: re.Pattern[str] | None
    ) -> ProcessRef | None:
        base = self._proc / str(pid)
        fields = self.stat(pid)
        if fields is None or fields.state == "Z" or fields.flags & _PF_KTHREAD:
            return None
        try:
            if uid is not None and base.stat().st_uid != uid:
                return None
            if match.comm is not None or pattern is not None:
                argv = (base / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
                args = [arg.decode(errors="replace") for arg in argv]
                if match.comm is not None and match.comm not in (
                    fields.name,
                    Path(args[0]).name,
                ):
                    return None
                if pattern is not None and not pattern.search(" ".join(args)):
                    return None
        except OSError:
            return None  # it exited while being looked at
        return ProcessRef(pid=pid, starttime=fields.starttime, name=fields.name)

    def _unit_pids(self, unit: str) -> set[int]:
        root = self._cgroup_root
        hierarchies = (
            [root]
            if (root / "cgroup.procs").exists()
            else [
                root / "unified",
                root / "systemd",
            ]
        )
        for hierarchy in hierarchies:
            if "/" in unit:
                group: Path | None = hierarchy / unit
                if not (hierarchy / unit / "cgroup.procs").exists():
                    group = None
            else:
                group = _find_cgroup(hierarchy, unit)
            if group is not None:
                return _cgroup_pids(group)
        raise ValueError(f"unit {unit} has no cgroup under {root} (is it running?)")


def resolve_group(match: ProcessMatch, groups: Mapping[str, ProcessMatch]) -> ProcessMatch:
    """The criteria of ``match.group`` (``match`` itself when it names no group).

    Raises:
        ValueError: when no group of that name is configured, naming the known ones.
    """
    if match.group is None:
        return match
    found = groups.get(match.group)
    if found is None:
        known = ", ".join(sorted(groups)) or "none configured"
        raise ValueError(
            f"no process group named {match.group!r} in probes.processes.groups ({known})"
        )
    return found


def _uid(user: str | int) -> int:
    if isinstance(user, int) or user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ValueError(f"no user named {user!r}") from None


def _read_pidfile(path: str) -> int:
    with Path(path).open(encoding="ascii", errors="replace") as f:
        text = f.read(64).strip()
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"pidfile {path} does not hold a PID: {text[:20]!r}")
    return int(text)


def _find_cgroup(hierarchy: Path, unit: str) -> Path | None:
    queue = deque([(hierarchy, 0)])
    while queue:
        directory, depth = queue.popleft()
        try:
            children = [e for e in os.scandir(directory) if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        for child in children:
            if child.name == unit:
                return Path(child.path)
            if depth < _MAX_CGROUP_DEPTH:
                queue.append((Path(child.path), depth + 1))
    return None


def _cgroup_pids(group: Path) -> set[int]:
    pids: set[int] = set()
    for directory, _, _ in os.walk(group):
        try:
            text = (Path(directory) / "cgroup.procs").read_text()
        except OSError:
            continue
        pids.update(int(line) for line in text.split())
    return pids
