"""Value types the configuration models share: durations and the frozen model base."""

from __future__ import annotations

__all__ = ["Duration", "FrozenModel", "format_duration", "parse_duration"]

import re
from datetime import timedelta
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer

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
