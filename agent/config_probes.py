"""Configuration of the probes: the ``probes`` section, one model per probe."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Self

from pydantic import (
    ByteSize,
    Field,
    field_validator,
    model_validator,
)

from agent.config_checks import CustomProbeConfig, EndpointsProbeConfig
from agent.config_kmsg import KmsgPatternConfig, default_kmsg_patterns
from agent.config_types import Duration, ProbeConfig
from agent.config_types import FrozenModel as _Frozen
from agent.config_types import check_regex as _check_regex
from agent.probes.catalog import PROBE_NAMES


class FilesystemProbeConfig(ProbeConfig):
    """Filesystem probe: which mounts to leave out."""

    exclude_fstypes: tuple[str, ...] = (
        "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs",
        "devpts", "devtmpfs", "efivarfs", "fusectl", "hugetlbfs", "iso9660", "mqueue",
        "nsfs", "overlay", "proc", "pstore", "rpc_pipefs", "securityfs", "selinuxfs",
        "squashfs", "erofs", "sysfs", "tracefs", "ramfs",
    )  # fmt: skip
    """Filesystem types left out (pseudo and read-only image filesystems)."""
    exclude_mountpoints: str = (
        r"^/(dev|proc|sys|run/credentials|var/lib/docker/.+|var/lib/containers/storage/.+"
        r"|var/lib/kubelet/pods/.+)($|/)"
    )
    """Mount points left out: a regular expression matched from the start."""

    @field_validator("exclude_mountpoints")
    @classmethod
    def _regex(cls, value: str) -> str:
        return _check_regex(value)


class DiskioProbeConfig(ProbeConfig):
    """Disk I/O probe: which block devices to leave out (partitions, loop and ram by default)."""

    exclude_devices: str = (
        r"^(ram|loop|fd|zram|(h|s|v|xv)d[a-z]+\d+|nvme\d+n\d+p\d+|mmcblk\d+p\d+)\d*$"
    )
    """Block devices left out: a regular expression matched against the device name."""

    @field_validator("exclude_devices")
    @classmethod
    def _regex(cls, value: str) -> str:
        return _check_regex(value)


class NetworkProbeConfig(ProbeConfig):
    """Network probe: which interfaces to leave out."""

    exclude_interfaces: str = r"^(lo|veth.*|docker\d+|br-.*|cali.*|flannel.*|cni\d+)$"
    """Network interfaces left out: a regular expression matched against the name."""

    @field_validator("exclude_interfaces")
    @classmethod
    def _regex(cls, value: str) -> str:
        return _check_regex(value)


_UNIT_SUFFIXES = (".service", ".scope", ".slice", ".socket", ".mount", ".swap")
_COMM_MAX = 15
"""The kernel keeps a process name (``comm``) in 16 bytes with the final NUL."""


class ProcessGroupConfig(_Frozen):
    """One named group of processes for the ``processes`` probe.

    Membership comes from ``pidfile`` or ``unit`` (the unit's cgroup) when one is given,
    else from every process on the host; ``comm``, ``cmdline`` and ``user`` then narrow it.
    Every matcher given must hold. ``min_count`` and ``max_rss_bytes`` feed the default
    rules (``process-group-missing``, ``process-group-rss-over-limit``).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$", max_length=100)
    """The group's name: the ``group`` label of its series."""
    comm: str | None = Field(default=None, min_length=1)
    """The process name (``/proc/PID/comm``, at most 15 bytes) must equal this."""
    cmdline: str | None = Field(default=None, min_length=1)
    """A regular expression searched for in the process's command line."""
    pidfile: Path | None = None
    """An absolute path to a file holding a PID; the group is that process."""
    user: str | None = Field(default=None, min_length=1)
    """The processes' user (name or numeric id)."""
    unit: str | None = Field(default=None, min_length=1)
    """A systemd unit: the group is the processes in its cgroup."""
    min_count: int = Field(default=1, ge=0)
    """Fewer processes than this fire ``process-group-missing``."""
    max_rss_bytes: ByteSize | None = Field(default=None, gt=0)
    """Resident memory of the whole group above which ``process-group-rss-over-limit`` fires."""

    @model_validator(mode="after")
    def _matchers(self) -> Self:
        where = f"group {self.name!r}"
        if not any((self.comm, self.cmdline, self.pidfile, self.user, self.unit)):
            raise ValueError(f"{where}: give at least one of comm, cmdline, pidfile, user or unit")
        if self.pidfile is not None and self.unit is not None:
            raise ValueError(f"{where}: give pidfile or unit, not both")
        if self.comm is not None and len(self.comm.encode()) > _COMM_MAX:
            raise ValueError(
                f"{where}: comm: {self.comm!r} is longer than the kernel's {_COMM_MAX}-byte "
                "process name, so it would never match; match it with cmdline instead"
            )
        if self.cmdline is not None:
            try:
                re.compile(self.cmdline)
            except re.error as err:
                raise ValueError(
                    f"{where}: cmdline: invalid regular expression {self.cmdline!r}: {err}"
                ) from err
        if self.pidfile is not None and not self.pidfile.is_absolute():
            raise ValueError(f"{where}: pidfile: {str(self.pidfile)!r} must be an absolute path")
        if self.unit is not None:
            parts = self.unit.split("/")
            if not self.unit.endswith(_UNIT_SUFFIXES) or any(p in ("", ".", "..") for p in parts):
                raise ValueError(
                    f"{where}: unit: {self.unit!r} is not a unit name such as nginx.service "
                    "(or a cgroup path below the root such as user.slice/user@1000.service)"
                )
        return self


class ProcessesProbeConfig(ProbeConfig):
    """The ``processes`` probe: the groups to watch (none by default: the probe is idle)."""

    groups: tuple[ProcessGroupConfig, ...] = ()

    @field_validator("groups")
    @classmethod
    def _unique_groups(
        cls, groups: tuple[ProcessGroupConfig, ...]
    ) -> tuple[ProcessGroupConfig, ...]:
        names = [group.name for group in groups]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"duplicate group name {repeated[0]!r}; group names must be unique")
        return groups


class GpuProbeConfig(ProbeConfig):
    """GPU probe (NVIDIA, through NVML; needs the ``gpu`` extra).

    Enabled by default: on a host without an NVIDIA driver it disables itself with one
    info line and emits nothing, so one configuration serves a mixed fleet.
    """

    xid_window: Duration = timedelta(minutes=10)
    """How far back nodemedic_gpu_xid_errors_recent counts XID errors; at least 1s."""

    @field_validator("xid_window")
    @classmethod
    def _window(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("xid_window must be at least 1s")
        return value


_UNIT_PATTERN = re.compile(r"^[A-Za-z0-9:_.\\@*?\[\]!-]{1,256}$")


class UnitsProbeConfig(ProbeConfig):
    """systemd units probe: which units to watch over D-Bus; ``interval`` is the resync.

    The probe is event-driven (D-Bus signals); ``interval`` only paces the full re-read.
    """

    units: tuple[str, ...] = ("*.service",)
    """Unit names or globs to watch (ListUnitsByPatterns)."""
    restart_window: Duration = timedelta(minutes=10)
    """How far back automatic restarts count for nodemedic_unit_recent_restarts."""
    bus: str | None = None
    """D-Bus address of systemd's bus (unix:path=...); default the system bus."""

    @field_validator("units")
    @classmethod
    def _unit_patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            if not _UNIT_PATTERN.fullmatch(pattern):
                raise ValueError(
                    f"invalid unit name or glob {pattern!r}: use unit names such as "
                    "nginx.service, or globs such as *.service or getty@*.service"
                )
        return value

    @field_validator("restart_window")
    @classmethod
    def _positive_window(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("restart_window must be positive, e.g. 10m")
        return value

    @field_validator("bus")
    @classmethod
    def _bus_address(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z]+:[^\s]*=[^\s]*", value):
            raise ValueError(
                f"invalid D-Bus address {value!r}: e.g. unix:path=/run/dbus/system_bus_socket; "
                "leave it out for the system bus"
            )
        return value


class KmsgProbeConfig(ProbeConfig):
    """Kernel log probe: patterns (the defaults, replaced or extended by name) and a line cap."""

    path: Path = Path("/dev/kmsg")
    """The kernel log device."""
    patterns: tuple[KmsgPatternConfig, ...] = ()
    """Patterns to add, or to replace the default of the same name."""
    default_patterns: bool = True
    """Use the shipped patterns (agent/defaults/kmsg.yaml)."""
    disabled_patterns: tuple[str, ...] = ()
    """Names of shipped patterns to leave out."""
    max_lines_per_second: int = Field(default=1000, ge=1, le=1_000_000)
    """Most kernel log lines examined per second; the rest are counted as dropped."""

    @model_validator(mode="after")
    def _names(self) -> Self:
        seen: set[str] = set()
        for pattern in self.patterns:
            if pattern.name in seen:
                raise ValueError(f"patterns: duplicate pattern name {pattern.name!r}")
            seen.add(pattern.name)
        known = {pattern.name for pattern in default_kmsg_patterns()}
        for name in self.disabled_patterns:
            if name not in known:
                raise ValueError(
                    f"disabled_patterns: {name!r} is not a default pattern "
                    f"(they are: {', '.join(sorted(known))})"
                )
        return self

    @property
    def effective_patterns(self) -> tuple[KmsgPatternConfig, ...]:
        """The patterns in use: the defaults, each replaced by a same-named entry of
        ``patterns`` (disabled ones left out), then the other entries in order."""
        own = {pattern.name: pattern for pattern in self.patterns}
        defaults = default_kmsg_patterns() if self.default_patterns else ()
        merged = [
            own.pop(pattern.name, pattern)
            for pattern in defaults
            if pattern.name not in self.disabled_patterns or pattern.name in own
        ]
        return (*merged, *own.values())


def _probe(interval: float) -> Any:
    return Field(default_factory=lambda: ProbeConfig(interval=timedelta(seconds=interval)))


class ProbesConfig(_Frozen):
    """One entry per probe."""

    cpu: ProbeConfig = _probe(10)
    memory: ProbeConfig = _probe(10)
    load: ProbeConfig = _probe(10)
    pressure: ProbeConfig = _probe(10)
    filesystem: FilesystemProbeConfig = Field(
        default_factory=lambda: FilesystemProbeConfig(interval=timedelta(seconds=30))
    )
    diskio: DiskioProbeConfig = Field(
        default_factory=lambda: DiskioProbeConfig(interval=timedelta(seconds=10))
    )
    network: NetworkProbeConfig = Field(
        default_factory=lambda: NetworkProbeConfig(interval=timedelta(seconds=10))
    )
    fds: ProbeConfig = _probe(30)
    clock: ProbeConfig = _probe(60)
    sensors: ProbeConfig = _probe(30)
    processes: ProcessesProbeConfig = Field(default_factory=ProcessesProbeConfig)
    gpu: GpuProbeConfig = Field(default_factory=GpuProbeConfig)
    endpoints: EndpointsProbeConfig = Field(default_factory=EndpointsProbeConfig)
    custom: CustomProbeConfig = Field(default_factory=CustomProbeConfig)
    units: UnitsProbeConfig = Field(
        default_factory=lambda: UnitsProbeConfig(interval=timedelta(seconds=60))
    )
    kmsg: KmsgProbeConfig = Field(default_factory=KmsgProbeConfig)

    def items(self) -> list[tuple[str, ProbeConfig]]:
        """(name, config) for every probe, in the catalog's order."""
        return [(name, getattr(self, name)) for name in PROBE_NAMES]

    def enabled(self) -> list[str]:
        """Names of the enabled probes."""
        return [name for name, cfg in self.items() if cfg.enabled]
