"""Configuration of the remediation engine: the ``remediation`` section."""

from __future__ import annotations

import re
from datetime import time as dt_time
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    Field,
    field_validator,
)

from agent.config_drain import DrainConfig
from agent.config_types import WEEKDAYS as _WEEKDAYS
from agent.config_types import FrozenModel as _Frozen
from agent.config_types import Weekday


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

    @field_validator("action_modules")
    @classmethod
    def _module_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", name) is None:
                raise ValueError(f"{name!r} is not a Python module name such as site.actions")
        return value
