"""Value types the configuration models share: durations and the frozen model base."""

from __future__ import annotations

__all__ = [
    "WEEKDAYS",
    "Duration",
    "FrozenModel",
    "ProbeConfig",
    "Weekday",
    "check_regex",
    "dotted_path",
    "format_duration",
    "parse_duration",
    "split_host_port",
]

import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, field_validator

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> timedelta:
    """Parse ``500ms``, ``10s``, ``5m``, ``1h30m``, ``2d`` (or a timedelta) into a timedelta.

    Raises:
        ValueError: with a message that shows the accepted forms.
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        text = value.strip()
        pos = 0
        total = 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if text and pos == len(text):
            return timedelta(seconds=total)
    raise ValueError(
        f"invalid duration {value!r}: use a number with a unit, e.g. 500ms, 10s, 5m, 1h30m, 2d"
    )


def format_duration(value: timedelta) -> str:
    """``1500ms`` or ``30s``: the shortest form :func:`parse_duration` reads back."""
    ms = round(value.total_seconds() * 1000)
    if ms % 1000:
        return f"{ms}ms"
    return f"{ms // 1000}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
"""A duration written as ``500ms``, ``10s``, ``5m``, ``1h`` or ``2d``."""


class FrozenModel(BaseModel):
    """Base of every configuration model: unknown keys are refused, values are frozen."""

    # Attribute docstrings become field descriptions: docs/configuration.md shows them.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


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


def check_regex(value: str) -> str:
    """The pattern itself, after checking it compiles.

    Raises:
        ValueError: naming the pattern and what is wrong with it.
    """
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(f"invalid regular expression {value!r}: {err}") from err
    return value


def dotted_path(loc: Sequence[str | int]) -> str:
    """``rules[2].clear`` from a pydantic error location."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ProbeConfig(FrozenModel):
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
