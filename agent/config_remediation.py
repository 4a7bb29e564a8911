"""Configuration of the remediation engine: the ``remediation`` section."""

from __future__ import annotations

import re
from datetime import time as dt_time
from datetime import timedelta
from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from agent.config_drain import DrainConfig
from agent.config_types import WEEKDAYS as _WEEKDAYS
from agent.config_types import Duration, Weekday
from agent.config_types import FrozenModel as _Frozen


class RemediationWindow(_Frozen):
    """A weekly time range in a time zone.

    ``blackout``: nothing remediates inside it. ``maintenance``: once any maintenance
    window is configured, disruptive playbooks run only inside one. A range whose end
    is before its start runs past midnight into the next day.
    """

    name: str = Field(min_length=1)
    """The window's name, shown in decisions."""
    kind: Literal["maintenance", "blackout"]
    """maintenance (remediation only inside) or blackout (never inside)."""
    days: tuple[Weekday, ...] = _WEEKDAYS
    """Days the window applies: mon, tue, wed, thu, fri, sat, sun."""
    start: dt_time = dt_time(0, 0)
    """Start time of day (HH:MM), in timezone."""
    end: dt_time = dt_time(23, 59, 59)
    """End time of day (HH:MM), in timezone."""
    timezone: str = "UTC"
    """IANA time zone of start and end, e.g. Europe/Berlin."""

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


_KEY_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class FleetBudgetConfig(_Frozen):
    """The fleet budget: at most N hosts (or P% of live ones) in a disruptive run at once.

    Slots are leased keys in etcd, so a host that dies frees its slot when its lease
    expires. With ``enabled`` and etcd unreachable, disruptive runs do not start.
    """

    enabled: bool = False
    """Take a slot in etcd before every disruptive run (enforce mode)."""
    endpoints: tuple[str, ...] = ()
    """etcd client URLs (``http://HOST:2379`` or ``https://...``), tried in order for failover."""
    prefix: str = "/nodemedic/fleet-budget"
    """Key prefix under which members and slots live; one per fleet sharing a budget."""
    group: str = "default"
    """The budget group this host belongs to; hosts of a group share one budget."""
    max_disruptive: int | None = Field(default=None, ge=0)
    """At most this many hosts of the group in a disruptive run at once (0: none)."""
    max_disruptive_percent: float | None = Field(default=None, gt=0, le=100)
    """At most this percentage of the group's live members (rounded down, at least 1)."""
    lease_ttl: Duration = timedelta(seconds=20)
    """Lease TTL of member and slot keys: a dead host's slot is free after at most this."""
    slot_wait: Duration = timedelta(minutes=5)
    """How long a run waits for a free slot before it is skipped (0s: skip at once)."""
    poll_interval: Duration = timedelta(seconds=2)
    """How often a waiting run looks again (jittered) where no etcd watch can wake it."""
    request_timeout: Duration = timedelta(seconds=5)
    """Limit for one request to one etcd endpoint."""
    username: str | None = Field(default=None, min_length=1)
    """etcd user to authenticate as (etcd's auth must be enabled)."""
    password: SecretStr | None = None
    """Password of ``username``; best given as the systemd credential
    ``remediation__fleet_budget__password``. Never logged."""
    ca_file: Path | None = None
    """CA bundle that signed the etcd servers' certificates (https endpoints)."""
    cert_file: Path | None = None
    """Client certificate (PEM) for etcd's client-cert auth."""
    key_file: Path | None = None
    """Private key of ``cert_file``."""

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        form = "use http://HOST:PORT or https://HOST:PORT, e.g. https://etcd-1.example.com:2379"
        for url in value:
            try:
                parts = urlsplit(url)
                port = parts.port
            except ValueError as err:
                raise ValueError(f"invalid etcd endpoint {url!r}: {err}; {form}") from None
            if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
                raise ValueError(f"invalid etcd endpoint {url!r}; {form}")
            if parts.path not in ("", "/") or parts.query or parts.username is not None:
                raise ValueError(f"invalid etcd endpoint {url!r}: no path or user info; {form}")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/") or value.endswith("/") or "//" in value:
            raise ValueError(
                f"prefix {value!r} must start with '/' and not end with it, e.g. /nodemedic/budget"
            )
        return value

    @field_validator("group")
    @classmethod
    def _group(cls, value: str) -> str:
        if _KEY_PART.fullmatch(value) is None:
            raise ValueError(f"group {value!r} must be letters, digits, '.', '_' or '-'")
        return value

    @field_validator("lease_ttl")
    @classmethod
    def _ttl(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=2) <= value <= timedelta(hours=1):
            raise ValueError("lease_ttl must be between 2s and 1h (whole seconds)")
        return value

    @field_validator("poll_interval", "request_timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value < timedelta(milliseconds=10):
            raise ValueError("must be at least 10ms")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.enabled and not self.endpoints:
            raise ValueError("enabled needs endpoints: the etcd client URLs")
        if self.enabled and self.max_disruptive is None and self.max_disruptive_percent is None:
            raise ValueError("enabled needs max_disruptive, max_disruptive_percent or both")
        if self.password is not None and self.username is None:
            raise ValueError("password is set without username; set username too")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.request_timeout * 3 > self.lease_ttl:
            raise ValueError(
                "request_timeout must be at most a third of lease_ttl, or a slow request "
                "could let a lease expire between keepalives"
            )
        return self


class RemediationConfig(_Frozen):
    """The remediation engine: where playbooks come from and the host-wide safety limits."""

    enabled: bool = True
    """Run the remediation engine."""
    playbooks_dir: Path | None = None
    """Directory of operator playbooks (*.yaml); one named like a built-in replaces it."""
    builtin_playbooks: bool = True
    """Load the built-in playbooks (all in observe mode)."""
    action_modules: tuple[str, ...] = ()
    """Extra Python modules whose ACTIONS tuple adds actions."""
    pause_file: Path = Path("/etc/nodemedic/pause")
    """While this file exists, remediation is paused."""
    windows: tuple[RemediationWindow, ...] = ()
    """Maintenance and blackout windows."""
    protected_targets: tuple[str, ...] = ()
    """Glob patterns of targets never touched, besides PID 1, the agent, sshd and dbus."""
    allowlist: tuple[str, ...] = ()
    """Glob patterns of targets that may be touched; empty allows every target not protected."""
    storm_threshold: int = Field(default=10, ge=1)
    """With more conditions firing than this, disruptive playbooks hold."""
    max_runs_kept: int = Field(default=10_000, ge=100)
    """Runs the journal keeps; older finished ones are trimmed."""
    drain: DrainConfig = Field(default_factory=DrainConfig)
    """How drain.node takes this node out of its load balancers (and undrain.node back)."""
    fleet_budget: FleetBudgetConfig = Field(default_factory=FleetBudgetConfig)
    """How many hosts of the fleet may be in a disruptive run at once (etcd)."""

    @field_validator("action_modules")
    @classmethod
    def _module_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", name) is None:
                raise ValueError(f"{name!r} is not a Python module name such as site.actions")
        return value
