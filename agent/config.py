"""Configuration: one YAML file, ``NODEMEDIC_*`` environment overrides, systemd credentials.

Precedence, highest first: environment (``NODEMEDIC_PROBES__CPU__INTERVAL=5s``), the YAML
file, files in ``$CREDENTIALS_DIRECTORY`` (named like the variable without its prefix,
e.g. ``node__name``), then the defaults below. Every model forbids unknown keys and is
frozen. :func:`load_settings` turns every problem into a :class:`~agent.errors.ConfigError`
whose issues name the source, the field path and what would be valid.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_RULES_FILE",
    "AgentSettings",
    "ApiConfig",
    "CheckTlsConfig",
    "ConditionsConfig",
    "CustomCheckConfig",
    "CustomProbeConfig",
    "Duration",
    "EndpointCheckConfig",
    "EndpointsProbeConfig",
    "HistoryConfig",
    "KmsgProbeConfig",
    "LogConfig",
    "MqttConfig",
    "MqttOutboxConfig",
    "MqttTlsConfig",
    "NodeConfig",
    "ProbeConfig",
    "ProbesConfig",
    "ProcessGroupConfig",
    "ProcessesProbeConfig",
    "RemediationConfig",
    "RemediationWindow",
    "RuleConfig",
    "UnitsProbeConfig",
    "load_settings",
    "parse_duration",
]

import contextvars
import difflib
import os
import re
import socket
from collections.abc import Mapping, Sequence
from datetime import time as dt_time
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from agent.broker_url import BrokerUrl, parse_broker_url
from agent.config_kmsg import KmsgPatternConfig, default_kmsg_patterns
from agent.config_remote import RemoteConfig
from agent.config_types import Duration, parse_duration
from agent.config_types import FrozenModel as _Frozen
from agent.config_types import format_duration as _format_duration
from agent.errors import ConfigError, ConfigIssue
from agent.model import Severity
from agent.probes.catalog import CATALOG, PROBE_NAMES

ENV_PREFIX = "NODEMEDIC_"
DEFAULT_RULES_FILE = Path(__file__).parent / "defaults" / "rules.yaml"


class NodeConfig(_Frozen):
    """Who this node is."""

    name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=253)
    """The node's identity in events (``source: nodemedic://<name>``) and MQTT topics."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Free-form labels of the node."""

    @field_validator("name")
    @classmethod
    def _topic_safe(cls, value: str) -> str:
        if any(ch in value for ch in "/+#\0") or value != value.strip():
            raise ValueError("node name must not contain '/', '+', '#', NUL or surrounding spaces")
        return value


class ApiConfig(_Frozen):
    """The HTTP API."""

    listen: str = "127.0.0.1:9464"
    """``HOST:PORT`` or ``[::1]:PORT`` the HTTP API binds (port 0 picks a free one)."""
    enabled: bool = True
    """Serve the HTTP API (metrics, health, conditions, events)."""

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_host_port(value)
        return value

    @property
    def host(self) -> str:
        """Host part of ``listen``."""
        return split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        """Port part of ``listen`` (0 picks a free port)."""
        return split_host_port(self.listen)[1]


def split_host_port(value: str) -> tuple[str, int]:
    """Split ``127.0.0.1:9464`` or ``[::1]:9464`` into host and port.

    Raises:
        ValueError: when the value is not HOST:PORT with a port in 0-65535.
    """
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", value)
    if match is None:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9464 or [::1]:9464, got {value!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return host, port


class LogConfig(_Frozen):
    """Logging."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """The lowest level logged."""
    format: Literal["auto", "text", "journal"] = "auto"
    """``auto``: the journal under systemd, else text on stderr."""


class HistoryConfig(_Frozen):
    """The local event history in the state directory's SQLite database."""

    max_events: int = Field(default=10_000, ge=100, le=10_000_000)
    """Events kept in the local history; the oldest are trimmed first."""


class ConditionsConfig(_Frozen):
    """Flap damping for every rule's conditions.

    A condition that went to firing ``flap_limit`` times within ``flap_window`` is
    flapping: it resolves only once its value has stayed clear for a whole window.
    """

    flap_window: Duration = timedelta(minutes=10)
    """The window in which firings are counted, and a flapping condition must stay clear."""
    flap_limit: int = Field(default=3, ge=2)
    """Firings within ``flap_window`` that make a condition flapping."""


class ProbeConfig(_Frozen):
    """Options every probe has."""

    enabled: bool = True
    """Run this probe."""
    interval: Duration = timedelta(seconds=10)
    """Time between runs; at least 100ms."""
    timeout: Duration | None = None
    """How long one run may take before it is failed as hung; default the interval, at most 10s."""

    @field_validator("interval")
    @classmethod
    def _min_interval(cls, value: timedelta) -> timedelta:
        if value < timedelta(milliseconds=100):
            raise ValueError("interval must be at least 100ms")
        return value

    @property
    def effective_timeout(self) -> float:
        """Seconds a run may take: ``timeout``, or the interval capped at 10 s."""
        if self.timeout is not None:
            return self.timeout.total_seconds()
        return min(self.interval.total_seconds(), 10.0)


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
    restart_window: Duration = timedelta(minutes=10)
    bus: str | None = None

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


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(f"invalid regular expression {value!r}: {err}") from err
    return value


# -- endpoint and custom checks (probes.endpoints, probes.custom) ---------------------

_CHECK_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STATUS_RANGE = re.compile(r"([1-5])xx|(\d{3})(?:-(\d{3}))?")


def _status_ranges(value: object) -> object:
    """``200``, ``"200-299"``, ``"2xx"`` or a list of them, as ((low, high), ...)."""
    items = value if isinstance(value, list | tuple) else [value]
    ranges: list[tuple[int, int]] = []
    for item in items:
        if isinstance(item, list | tuple) and len(item) == 2:
            ranges.append((int(item[0]), int(item[1])))
            continue
        if isinstance(item, bool) or not isinstance(item, int | str):
            # pydantic reports a ValueError as a validation error, a TypeError as a crash.
            raise ValueError(f"expected a status, a range or a list of them, got {item!r}")  # noqa: TRY004
        match = _STATUS_RANGE.fullmatch(str(item).strip())
        if match is None:
            raise ValueError(f"{item!r} is not a status: use e.g. 200, '200-299' or '2xx'")
        if match.group(1):
            low = int(match.group(1)) * 100
            ranges.append((low, low + 99))
        else:
            low = int(match.group(2))
            ranges.append((low, int(match.group(3) or low)))
    for low, high in ranges:
        if not 100 <= low <= high <= 599:
            raise ValueError(f"status range {low}-{high} is not within 100-599 (low first)")
    if not ranges:
        raise ValueError("expected at least one status")
    return tuple(ranges)


class CheckTlsConfig(_Frozen):
    """TLS for an ``https://`` endpoint check: verify the server, optionally with our own CA."""

    verify: bool = True
    ca_file: Path | None = None


class _CheckConfig(_Frozen):
    """What every check has. Errors inside one are reported with the check's name."""

    name: str = Field(pattern=_CHECK_NAME, max_length=100)
    interval: Duration | None = None
    timeout: Duration | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _name_the_check(cls, data: Any, handler: Any) -> Any:
        try:
            return handler(data)
        except ValidationError as err:
            name = data.get("name") if isinstance(data, Mapping) else None
            if not isinstance(name, str) or not re.fullmatch(_CHECK_NAME, name):
                raise
            if any(str(e["msg"]).startswith("Value error, check ") for e in err.errors()):
                raise
            problems = "; ".join(_check_problem(error) for error in err.errors())
            raise ValueError(f"check {name!r}: {problems}") from None

    @field_validator("interval")
    @classmethod
    def _min_interval(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value < timedelta(milliseconds=100):
            raise ValueError("must be at least 100ms")
        return value

    @field_validator("timeout")
    @classmethod
    def _min_timeout(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value < timedelta(milliseconds=10):
            raise ValueError("must be at least 10ms")
        return value

    def _invalid(self, problem: str) -> ValueError:
        # Model-level checks run outside the wrap above, so they name the check themselves.
        return ValueError(f"check {self.name!r}: {problem}")

    def seconds(self, default_interval: float) -> tuple[float, float]:
        """(interval, timeout): the probe's interval by default; timeout at most 10 s."""
        interval = self.interval.total_seconds() if self.interval else default_interval
        timeout = self.timeout.total_seconds() if self.timeout else min(interval, 10.0)
        return interval, timeout


def _check_problem(error: Any) -> str:
    field = _dotted(error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown key {field!r}"
    message = "required field is missing" if error["type"] == "missing" else error["msg"]
    message = str(message).removeprefix("Value error, ")
    return f"{field}: {message}" if field else message


class EndpointCheckConfig(_CheckConfig):
    """An HTTP(S) GET of ``url``, or a TCP connect to ``tcp`` (``HOST:PORT``)."""

    url: str | None = None
    tcp: str | None = None
    expect_status: Annotated[tuple[tuple[int, int], ...], BeforeValidator(_status_ranges)] = (
        (200, 200),
    )
    body_regex: str | None = None
    max_redirects: int = Field(default=3, ge=0, le=10)
    max_body: ByteSize = Field(default=ByteSize(64 * 1024), ge=1024, le=16 * 1024 * 1024)
    tls: CheckTlsConfig = Field(default_factory=CheckTlsConfig)

    @model_validator(mode="after")
    def _target(self) -> Self:
        if (self.url is None) == (self.tcp is None):
            raise self._invalid("give exactly one of url (http:// or https://) or tcp (HOST:PORT)")
        if self.tcp is not None:
            try:
                host, port = split_host_port(self.tcp)
            except ValueError as err:
                raise self._invalid(f"tcp: {err}") from None
            if not host or port == 0:
                raise self._invalid(f"tcp: {self.tcp!r} needs a host and a port in 1-65535")
            http_only = {"expect_status", "body_regex", "max_redirects", "max_body", "tls"}
            if self.model_fields_set & http_only:
                keys = ", ".join(sorted(self.model_fields_set & http_only))
                raise self._invalid(f"{keys}: only for url checks, not tcp")
            return self
        url = str(self.url)
        scheme, sep, rest = url.partition("://")
        host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
        if not sep or scheme.lower() not in ("http", "https") or not host or " " in url:
            raise self._invalid(
                f"url: {url!r} is not an http:// or https:// URL with a host, e.g. "
                "http://127.0.0.1:8080/healthz"
            )
        if scheme.lower() == "http" and "tls" in self.model_fields_set:
            raise self._invalid("tls: only for https:// URLs")
        if self.body_regex is not None:
            try:
                _check_regex(self.body_regex)
            except ValueError as err:
                raise self._invalid(f"body_regex: {err}") from None
        return self


class CustomCheckConfig(_CheckConfig):
    """A Nagios-style plugin: ``command`` is the argv, run without a shell."""

    command: tuple[str, ...] = Field(min_length=1)
    max_output: ByteSize = Field(default=ByteSize(16 * 1024), ge=256, le=1024 * 1024)
    env: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _argv(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("command"), str):
            raise ValueError(  # noqa: TRY004 - pydantic reports only ValueError as invalid
                "command: give the argv as a list, e.g. [/usr/lib/nagios/plugins/check_load, "
                "-w, '5,4,3'], not a shell string; checks never run through a shell"
            )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        program = self.command[0]
        if not program.startswith("/"):
            raise self._invalid(f"command: the program must be an absolute path, got {program!r}")
        if any("\0" in arg for arg in self.command):
            raise self._invalid("command: arguments must not contain NUL")
        bad = [name for name in self.env if not _ENV_NAME.fullmatch(name)]
        if bad:
            raise self._invalid(f"env: {bad[0]!r} is not an environment variable name")
        return self


_C = TypeVar("_C", bound=_CheckConfig)


def _unique_checks(checks: tuple[_C, ...]) -> tuple[_C, ...]:
    seen: set[str] = set()
    for check in checks:
        if check.name in seen:
            raise ValueError(f"duplicate check name {check.name!r}; check names must be unique")
        seen.add(check.name)
    return checks


class EndpointsProbeConfig(ProbeConfig):
    """Endpoint checks; ``interval`` is each check's default and the longest report gap."""

    checks: tuple[EndpointCheckConfig, ...] = ()

    @field_validator("checks")
    @classmethod
    def _unique(cls, checks: tuple[EndpointCheckConfig, ...]) -> tuple[EndpointCheckConfig, ...]:
        return _unique_checks(checks)


class CustomProbeConfig(ProbeConfig):
    """Custom (Nagios plugin) checks; ``interval`` is each check's default."""

    checks: tuple[CustomCheckConfig, ...] = ()

    @field_validator("checks")
    @classmethod
    def _unique(cls, checks: tuple[CustomCheckConfig, ...]) -> tuple[CustomCheckConfig, ...]:
        return _unique_checks(checks)


class KmsgProbeConfig(ProbeConfig):
    """Kernel log probe: patterns (the defaults, replaced or extended by name) and a line cap."""

    path: Path = Path("/dev/kmsg")
    patterns: tuple[KmsgPatternConfig, ...] = ()
    default_patterns: bool = True
    disabled_patterns: tuple[str, ...] = ()
    max_lines_per_second: int = Field(default=1000, ge=1, le=1_000_000)

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


def _one_or_many(value: object) -> object:
    # `url: mqtt://a:1883` and `url: [mqtt://a:1883, mqtts://b:8883]` are both natural.
    return (value,) if isinstance(value, str) else value


def _protocol_text(value: object) -> object:
    # YAML reads `protocol: 5` as an int and `protocol: 3.1.1` as a string.
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class MqttTlsConfig(_Frozen):
    """TLS for ``mqtts://`` brokers: the CA to trust and the client certificate to present."""

    ca_file: Path | None = None
    """CA certificates to trust (PEM); default the system's."""
    cert_file: Path | None = None
    """Client certificate to present (PEM); needs ``key_file`` unless it holds the key."""
    key_file: Path | None = None
    """Private key of ``cert_file`` (PEM)."""
    check_hostname: bool = True
    """Check that the broker's certificate names the host in the URL."""

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file is set without cert_file; give both or neither")
        return self


class MqttOutboxConfig(_Frozen):
    """Bounds of the SQLite outbox that holds events until the broker acknowledges them.

    When either bound is exceeded the outbox sheds events: lowest severity first, then
    oldest (see the README).
    """

    max_events: int = Field(default=100_000, ge=10, le=10_000_000)
    """Events the outbox holds at most; beyond that it sheds."""
    max_bytes: ByteSize = Field(default=ByteSize(64 * 1024 * 1024), ge=64 * 1024)
    """Payload bytes the outbox holds at most; beyond that it sheds."""


class MqttConfig(_Frozen):
    """Publishing events and state to an MQTT broker; without ``url`` the agent is local-only."""

    url: Annotated[str | tuple[str, ...], BeforeValidator(_one_or_many)] = ()
    """``mqtt://HOST[:1883]`` or ``mqtts://HOST[:8883]``, or a list tried in order for failover."""
    topic_prefix: str = "nodemedic/v1"
    """The topics' first levels (no ``+``, ``#``, leading or trailing ``/``)."""
    protocol: Annotated[Literal["5", "3.1.1"], BeforeValidator(_protocol_text)] = "5"
    """MQTT protocol version."""
    username: str | None = Field(default=None, min_length=1)
    """User name to authenticate with."""
    password: SecretStr | None = None
    """Password; best given as the systemd credential ``mqtt__password``. Never logged."""
    tls: MqttTlsConfig = Field(default_factory=MqttTlsConfig)
    keepalive: Duration = timedelta(seconds=30)
    """MQTT keep-alive; a dead link is noticed within 1.5 times this."""
    session_expiry: Duration = timedelta(hours=1)
    """How long the broker keeps the session (and commands for the node) after a disconnect."""
    connect_timeout: Duration = timedelta(seconds=10)
    """Limit for the TCP/TLS connect and the CONNACK."""
    inflight: int = Field(default=20, ge=1, le=65535)
    """Events published but not yet acknowledged, at most; at most the broker's receive maximum."""
    reconnect_min: Duration = timedelta(milliseconds=500)
    """First reconnect delay; it doubles (with jitter) up to ``reconnect_max``."""
    reconnect_max: Duration = timedelta(seconds=60)
    """Longest reconnect delay."""
    auth_retry: Duration = timedelta(seconds=60)
    """Retry pace after the broker refused the credentials or the TLS handshake failed."""
    outbox: MqttOutboxConfig = Field(default_factory=MqttOutboxConfig)

    @field_validator("url")
    @classmethod
    def _urls(cls, value: str | tuple[str, ...]) -> tuple[str, ...]:
        urls = (value,) if isinstance(value, str) else value
        for url in urls:
            parse_broker_url(url)
        return urls

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or value.startswith("/") or value.endswith("/") or "//" in value:
            raise ValueError(
                f"topic_prefix {value!r} must be non-empty levels joined by '/', without a"
                " leading or trailing '/', e.g. nodemedic/v1"
            )
        if any(ch in value for ch in "+#\0"):
            raise ValueError(f"topic_prefix {value!r} must not contain '+', '#' or NUL")
        return value

    @field_validator("keepalive")
    @classmethod
    def _keepalive(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= value <= timedelta(seconds=65535):
            raise ValueError("keepalive must be between 1s and 65535s (MQTT's limit)")
        return value

    @field_validator("session_expiry")
    @classmethod
    def _session_expiry(cls, value: timedelta) -> timedelta:
        if not timedelta(0) <= value <= timedelta(seconds=0xFFFFFFFE):
            raise ValueError("session_expiry must be between 0s and 136y (MQTT's limit)")
        return value

    @field_validator("connect_timeout", "reconnect_min", "reconnect_max", "auth_retry")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value < timedelta(milliseconds=10):
            raise ValueError("must be at least 10ms")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.password is not None and self.username is None:
            raise ValueError("password is set without username; set mqtt.username too")
        if self.reconnect_max < self.reconnect_min:
            raise ValueError(
                "reconnect_max must not be below reconnect_min "
                f"({_format_duration(self.reconnect_max)} < {_format_duration(self.reconnect_min)})"
            )
        tls_files = (self.tls.ca_file, self.tls.cert_file)
        if any(path is not None for path in tls_files) and not any(
            broker.tls for broker in self.brokers
        ):
            raise ValueError(
                "tls files are set but no url uses mqtts://; use mqtts://HOST:PORT or drop mqtt.tls"
            )
        return self

    @property
    def enabled(self) -> bool:
        """True when at least one broker URL is configured."""
        return bool(self.url)

    @property
    def brokers(self) -> tuple[BrokerUrl, ...]:
        """The broker URLs, parsed, in failover order."""
        urls = (self.url,) if isinstance(self.url, str) else self.url
        return tuple(parse_broker_url(url) for url in urls)


Op = Literal[">", ">=", "<", "<=", "==", "!="]


class RuleConfig(_Frozen):
    """A threshold rule over one metric; see the README for its semantics."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, use_attribute_docstrings=True
    )

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=100)
    """Unique rule name: lower case, digits, ``-``, ``_``, ``.``."""
    metric: str
    """The metric watched, named exactly as /metrics exposes it."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Label matchers: an exact value, or ``~regex`` for a full regular-expression match."""
    op: Op
    """How the value is compared with ``threshold``."""
    threshold: float
    """The value that breaches."""
    clear: float | None = None
    """Hysteresis: once firing, it resolves only when ``value op clear`` no longer holds."""
    for_: Duration = Field(default=timedelta(0), alias="for")
    """How long a breach must last before the condition fires."""
    severity: Severity = Severity.WARNING
    """Severity of the condition's events."""
    description: str = ""
    """Shown with the condition."""

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in CATALOG:
            near = difflib.get_close_matches(value, CATALOG, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(near)}? " if near else ""
            raise ValueError(
                f"unknown metric {value!r}; {hint}metrics are named as /metrics shows them "
                "(the README lists them all)"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        spec = CATALOG[self.metric]
        for label, pattern in self.labels.items():
            if label not in spec.labels:
                valid = ", ".join(spec.labels) or "none"
                raise ValueError(
                    f"labels: {self.metric} has no label {label!r} (its labels: {valid})"
                )
            if pattern.startswith("~"):
                _check_regex(pattern[1:])
        if self.clear is not None:
            if self.op in ("==", "!="):
                raise ValueError(f"clear: not allowed with op {self.op!r}; leave it out")
            if self.op in (">", ">=") and self.clear > self.threshold:
                raise ValueError(
                    f"clear: {self.clear} is above threshold {self.threshold}; with op "
                    f"{self.op!r} the clear value must be <= the threshold"
                )
            if self.op in ("<", "<=") and self.clear < self.threshold:
                raise ValueError(
                    f"clear: {self.clear} is below threshold {self.threshold}; with op "
                    f"{self.op!r} the clear value must be >= the threshold"
                )
        return self


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class RemediationWindow(_Frozen):
    """A weekly time range in a time zone.

    ``blackout``: nothing remediates inside it. ``maintenance``: once any maintenance
    window is configured, disruptive playbooks run only inside one. A range whose end
    is before its start runs past midnight into the next day.
    """

    name: str = Field(min_length=1)
    kind: Literal["maintenance", "blackout"]
    days: tuple[Weekday, ...] = _WEEKDAYS
    start: dt_time = dt_time(0, 0)
    end: dt_time = dt_time(23, 59, 59)
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as Europe/Berlin or UTC"
            ) from err
        return value


class RemediationConfig(_Frozen):
    """The remediation engine: where playbooks come from and the host-wide safety limits."""

    enabled: bool = True
    playbooks_dir: Path | None = None
    builtin_playbooks: bool = True
    action_modules: tuple[str, ...] = ()
    pause_file: Path = Path("/etc/nodemedic/pause")
    windows: tuple[RemediationWindow, ...] = ()
    protected_targets: tuple[str, ...] = ()
    allowlist: tuple[str, ...] = ()
    storm_threshold: int = Field(default=10, ge=1)
    max_runs_kept: int = Field(default=10_000, ge=100)

    @field_validator("action_modules")
    @classmethod
    def _module_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", name) is None:
                raise ValueError(f"{name!r} is not a Python module name such as site.actions")
        return value


def _default_rules() -> list[RuleConfig]:
    data = yaml.safe_load(DEFAULT_RULES_FILE.read_text(encoding="utf-8"))
    return [RuleConfig.model_validate(rule) for rule in data["rules"]]


_config_data: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("_config_data")


class AgentSettings(BaseSettings):
    """The whole agent configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
        use_attribute_docstrings=True,
    )

    node: NodeConfig = Field(default_factory=NodeConfig)
    state_dir: Path = Path("/var/lib/nodemedic")
    """Holds ``nodemedic.db`` (SQLite, WAL): the outbox, event history and condition state."""
    api: ApiConfig = Field(default_factory=ApiConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    history: HistoryConfig = Field(default_factory=HistoryConfig)
    conditions: ConditionsConfig = Field(default_factory=ConditionsConfig)
    probes: ProbesConfig = Field(default_factory=ProbesConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    remote: RemoteConfig = Field(default_factory=RemoteConfig)
    remediation: RemediationConfig = Field(default_factory=RemediationConfig)
    rules: tuple[RuleConfig, ...] = Field(default_factory=lambda: tuple(_default_rules()))

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: tuple[RuleConfig, ...]) -> tuple[RuleConfig, ...]:
        seen: set[str] = set()
        for rule in rules:
            if rule.name in seen:
                raise ValueError(f"duplicate rule name {rule.name!r}; rule names must be unique")
            seen.add(rule.name)
        return rules

    @model_validator(mode="after")
    def _rules_have_probes(self) -> Self:
        enabled = set(self.probes.enabled()) | {"agent"}
        if "rules" not in self.model_fields_set:
            # The shipped rules follow the probes: disabling a probe drops its default
            # rules rather than making the operator rewrite the rule list. (The model is
            # frozen; this runs while it is being built.)
            kept = tuple(r for r in self.rules if CATALOG[r.metric].probe in enabled)
            object.__setattr__(self, "rules", kept)
            return self
        for rule in self.rules:
            probe = CATALOG[rule.metric].probe
            if probe not in enabled:
                raise ValueError(
                    f"rule {rule.name!r} watches {rule.metric}, which the disabled probe "
                    f"{probe!r} produces; enable probes.{probe} or remove the rule"
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment over the YAML file over credentials over defaults."""
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            InitSettingsSource(settings_cls, init_kwargs=dict(_config_data.get({}))),
        ]
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials:
            sources.append(_CredentialsSource(settings_cls, Path(credentials)))
        return tuple(sources)


class _CredentialsSource(EnvSettingsSource):
    """Reads settings from systemd credential files (``LoadCredential=node__name:...``).

    A credential named like the environment variable without its prefix, lower case,
    supplies that setting: ``api__listen`` for ``NODEMEDIC_API__LISTEN``.
    """

    def __init__(self, settings_cls: type[BaseSettings], directory: Path) -> None:
        values: dict[str, str] = {}
        if directory.is_dir():
            for entry in directory.iterdir():
                if entry.is_file():
                    key = ENV_PREFIX + entry.name
                    values[key.lower()] = entry.read_text(encoding="utf-8").strip()
        super().__init__(
            settings_cls,
            env_prefix=ENV_PREFIX,
            env_nested_delimiter="__",
            case_sensitive=False,
        )
        self.env_vars = values


def _read_yaml(path: Path) -> dict[str, Any]:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(source, "", "file not found")]) from None
    except OSError as err:
        raise ConfigError([ConfigIssue(source, "", f"cannot read: {err.strerror}")]) from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError([ConfigIssue(source, "", f"invalid YAML: {where}{problem}")]) from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            [ConfigIssue(source, "", f"expected a mapping of sections, got {type(data).__name__}")]
        )
    return data


def load_settings(path: Path | None, *, environ: Mapping[str, str] | None = None) -> AgentSettings:
    """Load and validate the configuration.

    Args:
        path: the YAML file, or None for defaults and environment only.
        environ: the environment to read overrides from (default ``os.environ``); used
            to tell whether a bad value came from the file or a variable.

    Raises:
        ConfigError: listing every issue with its source and field path.
    """
    data = _read_yaml(path) if path is not None else {}
    env = os.environ if environ is None else environ
    token = _config_data.set(data)
    try:
        return AgentSettings()
    except ValidationError as err:
        raise ConfigError(
            [_issue(error, data, str(path) if path else "defaults", env) for error in err.errors()]
        ) from err
    finally:
        _config_data.reset(token)


_NO_ECHO = frozenset({"mqtt.url", "mqtt.password", "mqtt.username"})
"""Fields whose bad values are not repeated in errors: they may hold a secret."""


def _issue(error: Any, data: Mapping[str, Any], source: str, env: Mapping[str, str]) -> ConfigIssue:
    loc: Sequence[str | int] = error["loc"]
    path = _dotted(loc)
    upper_env = {key.upper() for key in env}
    names = [str(part) for part in loc if isinstance(part, str)]
    credentials = Path(env.get("CREDENTIALS_DIRECTORY", "/nonexistent"))
    for depth in range(len(names), 0, -1):
        var = ENV_PREFIX + "__".join(names[:depth]).upper()
        if var in upper_env:
            source = f"environment {var}"
            break
        credential = "__".join(names[:depth]).lower()
        if (credentials / credential).is_file() and not _in_file(data, names[:depth]):
            source = f"credential {credentials / credential}"
            break
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = f"unknown key {_last_key(loc)!r}; {_valid_keys(loc)}"
    elif error["type"] == "missing":
        message = "required field is missing"
    elif (
        "input" in error
        and path not in _NO_ECHO
        and not isinstance(error["input"], dict | list | tuple)
        and repr(error["input"]) not in message
    ):
        message = f"{message} (got {error['input']!r})"
    return ConfigIssue(source, path, message)


def _in_file(data: Mapping[str, Any], names: Sequence[str]) -> bool:
    node: Any = data
    for name in names:
        if not isinstance(node, Mapping) or name not in node:
            return False
        node = node[name]
    return True


def _dotted(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def _last_key(loc: Sequence[str | int]) -> str:
    return str(loc[-1]) if loc else ""


def _valid_keys(loc: Sequence[str | int]) -> str:
    model: Any = AgentSettings
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return "see the README for valid keys"
        annotation = field.annotation
        args = getattr(annotation, "__args__", None)
        if args:
            annotation = next((a for a in args if isinstance(a, type)), annotation)
        model = annotation
    fields = getattr(model, "model_fields", None)
    if not fields:
        return "see the README for valid keys"
    keys = [info.alias or name for name, info in fields.items()]
    return "valid keys: " + ", ".join(keys)
