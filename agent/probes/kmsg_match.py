"""Kernel log patterns: match records, count matches over a window, hold conditions.

Pure logic with an injected clock; :mod:`agent.probes.kmsg` feeds it records read from
``/dev/kmsg``. A pattern of kind ``event`` turns a match into a :class:`ProbeEvent` (at
most ``max_events`` per window, so a dying disk cannot flood the outbox); one of kind
``condition`` sets a 0/1 series until its clearing regex matches or its timeout passes
without a new match. Every pattern counts its matches over its window.
"""

from __future__ import annotations

__all__ = ["KernelLogMatcher", "KernelPattern", "SlidingCount"]

import logging
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from agent.model import Sample
from agent.probes.base import Clock, ProbeEvent
from agent.probes.kmsg_record import FACILITY_KERNEL, KmsgRecord, level_name

if TYPE_CHECKING:
    from agent.config_kmsg import KmsgPatternConfig

log = logging.getLogger(__name__)

MATCHES = "nodemedic_kernel_pattern_matches"
CONDITION = "nodemedic_kernel_condition"
_BUCKETS = 60
"""A window is counted in this many slices: counts are exact to 1/60th of the window."""


@dataclass(frozen=True, slots=True)
class KernelPattern:
    """A compiled pattern; see ``KmsgPatternConfig`` for the meaning of each field.

    Attributes:
        name: the pattern's name, the ``pattern`` label of its series.
        kind: ``event`` or ``condition``.
        regex: searched in each message.
        event_type: CloudEvents type of its events.
        subject: ``str.format`` template over the named groups, or empty.
        clear: for a condition, the regex that clears it.
        timeout: for a condition, seconds after the last match when it clears.
        window: seconds the match count looks back.
        max_events: events per window at most; further matches are only counted.
        kernel_only: match only records of the kernel facility.
    """

    name: str
    kind: Literal["event", "condition"]
    regex: re.Pattern[str]
    event_type: str
    subject: str = ""
    clear: re.Pattern[str] | None = None
    timeout: float | None = None
    window: float = 600.0
    max_events: int = 20
    kernel_only: bool = True

    @classmethod
    def from_config(cls, config: KmsgPatternConfig) -> KernelPattern:
        """Compile a validated pattern from the configuration."""
        return cls(
            name=config.name,
            kind=config.kind,
            regex=re.compile(config.regex),
            event_type=config.event_type,
            subject=config.subject,
            clear=re.compile(config.clear) if config.clear is not None else None,
            timeout=config.timeout.total_seconds() if config.timeout is not None else None,
            window=config.window.total_seconds(),
            max_events=config.max_events,
            kernel_only=config.source == "kernel",
        )

    def groups(self, match: re.Match[str]) -> dict[str, Any]:
        """The named groups that took part, ``name__2`` folded into ``name``; digits as int."""
        found: dict[str, Any] = {}
        for key, value in match.groupdict().items():
            base = key.split("__")[0]
            if value is None or base in found:
                continue
            found[base] = int(value) if value.isdigit() and len(value) < 19 else value
        return found

    def render_subject(self, groups: Mapping[str, Any]) -> str | None:
        """The subject for a match, or None without a template or with its groups absent."""
        if not self.subject:
            return None
        try:
            return self.subject.format_map(groups) or None
        except KeyError:
            return None


class SlidingCount:
    """Events in the last ``window`` seconds, in :data:`_BUCKETS` slices (bounded memory).

    Args:
        window: seconds to look back.
    """

    def __init__(self, window: float) -> None:
        self._width = window / _BUCKETS
        self._window = window
        self._slices: deque[list[float]] = deque()  # [slice start, count]

    def add(self, now: float, count: int = 1) -> None:
        """Count ``count`` occurrences at ``now``."""
        start = now - now % self._width
        if self._slices and self._slices[-1][0] == start:
            self._slices[-1][1] += count
        else:
            self._slices.append([start, float(count)])
        self._trim(now)

    def total(self, now: float) -> int:
        """Occurrences whose slice lies within the window ending at ``now``."""
        self._trim(now)
        return int(sum(count for _, count in self._slices))

    def _trim(self, now: float) -> None:
        horizon = now - self._window
        while self._slices and self._slices[0][0] + self._width <= horizon:
            self._slices.popleft()


@dataclass(slots=True)
class _PatternState:
    pattern: KernelPattern
    matches: SlidingCount
    emitted: SlidingCount
    suppressing: bool = False
    set_at: float | None = None  # a condition's last match while set


class KernelLogMatcher:
    """Matches records against patterns and keeps their counts and conditions.

    Args:
        patterns: the patterns, in the order they are tried (a record may match several).
        clock: monotonic seconds.
    """

    def __init__(self, patterns: Sequence[KernelPattern], *, clock: Clock) -> None:
        self._clock = clock
        self._states = [
            _PatternState(p, SlidingCount(p.window), SlidingCount(p.window)) for p in patterns
        ]

    @property
    def patterns(self) -> list[KernelPattern]:
        """The patterns matched, in order."""
        return [state.pattern for state in self._states]

    def feed(self, record: KmsgRecord) -> list[ProbeEvent]:
        """Match one record; returns the events it raised."""
        now = self._clock()
        events: list[ProbeEvent] = []
        message = record.message
        from_kernel = record.facility == FACILITY_KERNEL
        for state in self._states:
            pattern = state.pattern
            if pattern.kernel_only and not from_kernel:
                continue
            cleared_by = pattern.clear if state.set_at is not None else None
            if cleared_by is not None and cleared_by.search(message):
                self._clear(state, f"cleared by: {message[:200]}")
                continue
            match = pattern.regex.search(message)
            if match is None:
                continue
            state.matches.add(now)
            event = self._event(state, record, match, now)
            if event is not None:
                events.append(event)
        return events

    def expire(self) -> None:
        """Clear conditions whose timeout passed since their last match."""
        now = self._clock()
        for state in self._states:
            timeout = state.pattern.timeout
            if state.set_at is not None and timeout is not None and now - state.set_at >= timeout:
                self._clear(state, f"no new match for {timeout:g}s")

    def next_deadline(self) -> float | None:
        """Clock time of the next condition timeout, or None."""
        deadlines = [
            state.set_at + state.pattern.timeout
            for state in self._states
            if state.set_at is not None and state.pattern.timeout is not None
        ]
        return min(deadlines, default=None)

    def samples(self) -> list[Sample]:
        """Every pattern's match count over its window; every condition as 0 or 1."""
        now = self._clock()
        samples: list[Sample] = []
        for state in self._states:
            name = state.pattern.name
            samples.append(Sample.of(MATCHES, state.matches.total(now), pattern=name))
            if state.pattern.kind == "condition":
                samples.append(Sample.of(CONDITION, float(state.set_at is not None), pattern=name))
        return samples

    def _event(
        self, state: _PatternState, record: KmsgRecord, match: re.Match[str], now: float
    ) -> ProbeEvent | None:
        pattern = state.pattern
        if pattern.kind == "condition":
            was_set = state.set_at is not None
            state.set_at = now
            if was_set:
                return None
            log.info("kernel condition %s set: %s", pattern.name, record.message[:200])
        elif state.emitted.total(now) >= pattern.max_events:
            if not state.suppressing:
                state.suppressing = True
                log.info(
                    "kernel pattern %s: %d events in %gs; further matches only counted",
                    pattern.name,
                    pattern.max_events,
                    pattern.window,
                )
            return None
        state.suppressing = False
        state.emitted.add(now)
        groups = pattern.groups(match)
        data: dict[str, Any] = {
            **groups,
            "pattern": pattern.name,
            "message": record.message,
            "level": level_name(record.level),
            "facility": record.facility,
            "seq": record.seq,
            "kernel_time": record.timestamp_us / 1e6,
        }
        if record.dictionary:
            data["dictionary"] = dict(record.dictionary)
        return ProbeEvent(pattern.event_type, pattern.render_subject(groups), data)

    def _clear(self, state: _PatternState, reason: str) -> None:
        state.set_at = None
        log.info("kernel condition %s cleared: %s", state.pattern.name, reason)
