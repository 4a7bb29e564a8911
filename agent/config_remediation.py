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
