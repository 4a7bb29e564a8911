"""The kernel log probe's patterns (``probes.kmsg.patterns``) and the shipped defaults.

Every error names the pattern as well as the field, since ``patterns[3]`` alone is no
help in a list merged with the defaults.
"""

from __future__ import annotations

__all__ = ["DEFAULT_KMSG_PATTERNS_FILE", "KmsgPatternConfig", "default_kmsg_patterns"]

import functools
import re
import string
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import Field, model_validator

from agent.config_types import Duration, FrozenModel

DEFAULT_KMSG_PATTERNS_FILE = Path(__file__).parent / "defaults" / "kmsg.yaml"
_KMSG_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)+$")


class KmsgPatternConfig(FrozenModel):
    """A kernel log pattern: an event (temporary) or a condition (permanent), always counted.

    Named groups of ``regex`` become the event's data; a group written ``name__2`` is a
    second alternative for ``name`` (Python's ``re`` forbids a name twice).
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=100)
    """The pattern's name: the `pattern` label of its series."""
    kind: Literal["event", "condition"]
    """event (an edge, recorded as an event) or condition (a level that holds until cleared)."""
    regex: str
    """Regular expression searched in each kernel log message; named groups become event data."""
    type: str | None = None
    """The event type; default io.nodemedic.kernel.<name with dashes as underscores>."""
    subject: str = ""
    """The event's subject, with {group} placeholders from the regex."""
    clear: str | None = None
    """For a condition: a regular expression whose match clears it."""
    timeout: Duration | None = None
    """For a condition: clear it this long after the last match."""
    window: Duration = timedelta(minutes=10)
    """How far back nodemedic_kernel_pattern_matches counts."""
    max_events: int = Field(default=20, ge=0, le=100_000)
    """Most events recorded per window; further matches are only counted."""
    source: Literal["kernel", "any"] = "kernel"
    """kernel: only lines the kernel logged; any: also lines written from userspace."""
    description: str = ""
    """What the pattern means, for humans."""

    @model_validator(mode="before")
    @classmethod
    def _name_every_problem(cls, data: Any) -> Any:
        # Errors name the pattern as well as the field: `patterns[3]` alone is no help in
        # a list merged with the defaults.
        if not isinstance(data, Mapping):
            return data
        name = data.get("name", "?")
        kind = data.get("kind")
        if kind is not None and kind not in ("event", "condition"):
            raise ValueError(
                f"pattern {name!r}: kind: unknown kind {kind!r}; use 'event' (temporary, "
                "recorded as an event) or 'condition' (a 0/1 series until cleared)"
            )
        for key in ("regex", "clear"):
            value = data.get(key)
            if isinstance(value, str):
                try:
                    re.compile(value)
                except re.error as err:
                    raise ValueError(
                        f"pattern {name!r}: {key}: invalid regular expression {value!r}: {err}"
                    ) from err
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        where = f"pattern {self.name!r}"
        if self.kind == "condition" and self.clear is None and self.timeout is None:
            raise ValueError(
                f"{where}: clear: a condition needs a clearing regex 'clear', a 'timeout', "
                "or both; otherwise it never clears"
            )
        if self.kind == "event" and (self.clear is not None or self.timeout is not None):
            raise ValueError(
                f"{where}: clear/timeout apply to kind 'condition' only; remove them or "
                "use kind: condition"
            )
        if self.timeout is not None and self.timeout <= timedelta(0):
            raise ValueError(f"{where}: timeout: must be positive")
        if self.window < timedelta(seconds=1):
            raise ValueError(f"{where}: window: must be at least 1s")
        if self.type is not None and not _KMSG_EVENT_TYPE.match(self.type):
            raise ValueError(
                f"{where}: type: {self.type!r} is not a dotted event type such as "
                "io.nodemedic.kernel.oom_kill"
            )
        groups = {g.split("__")[0] for g in re.compile(self.regex).groupindex}
        for _, placeholder, _, _ in string.Formatter().parse(self.subject):
            if placeholder is not None and placeholder not in groups:
                raise ValueError(
                    f"{where}: subject: {{{placeholder}}} is not a named group of regex "
                    f"(its groups: {', '.join(sorted(groups)) or 'none'})"
                )
        return self

    @property
    def event_type(self) -> str:
        """``type``, or ``io.nodemedic.kernel.<name>`` with ``-`` and ``.`` as ``_``."""
        if self.type is not None:
            return self.type
        return "io.nodemedic.kernel." + re.sub(r"[-.]", "_", self.name)


@functools.cache
def default_kmsg_patterns() -> tuple[KmsgPatternConfig, ...]:
    """The patterns shipped in ``agent/defaults/kmsg.yaml``."""
    data = yaml.safe_load(DEFAULT_KMSG_PATTERNS_FILE.read_text(encoding="utf-8"))
    return tuple(KmsgPatternConfig.model_validate(item) for item in data["patterns"])
