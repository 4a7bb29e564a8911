"""Rule evaluation and the condition state machine: pure, the clock is passed in.

One condition exists per (rule, series). Its states run ``ok -> pending -> firing -> resolved``:

* ``ok`` or ``resolved`` and a breach (``value <op> threshold``): ``pending``, or ``firing`` at
  once when the rule's ``for`` is zero.
* ``pending``: ``firing`` once the breach has held for ``for``; ``resolved`` as soon as it lapses.
* ``firing``: stays while ``value <op> clear`` holds (hysteresis; ``clear`` defaults to the
  threshold), then ``resolved``.
* NaN is unknown: it never starts or continues a breach, and it holds a firing condition
  (unknown is not healthy). The condition then shows the value None.

Flap damping: ``Condition.flaps`` keeps the times the condition fired within the flap window.
A condition that fired ``flap_limit`` times within the window is flapping: once its value
clears it stays firing until the value has been clear for a whole window. During that wait
``pending_since`` holds the time the value cleared (otherwise it is None while firing), so
the wait survives a restart: a tracker's whole state is its conditions, and a new tracker
built from ``conditions()`` carries on exactly where the old one stopped.
"""

from __future__ import annotations

__all__ = ["ConditionTracker", "Transition"]

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from agent.config import RuleConfig
from agent.model import (
    CONDITION_EVENT_PREFIX,
    Condition,
    ConditionKey,
    ConditionState,
    LabelSet,
    Sample,
)
from agent.rules_eval import CompiledRule, format_duration

_OK = ConditionState.OK
_PENDING = ConditionState.PENDING
_FIRING = ConditionState.FIRING
_RESOLVED = ConditionState.RESOLVED

_MATCH_MEMO_SIZE = 50_000
"""Series whose matching rules are remembered before the memo starts over."""

_Step = tuple[Condition, str | None, bool]
"""A condition after one sample: the new condition, the reason if its state changed, flapping."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change of one condition: what becomes an ``io.nodemedic.condition.*`` event.

    Attributes:
        condition: the condition after the change.
        previous: its state before the change.
        reason: why, for humans (``value 0.93 > 0.9 for 2m``, ``series gone``).
        rule: the rule that drove the change; None when the rule has been removed.
        flapping: True when the condition is flapping, or its resolution waited out flap
            damping.
    """

    condition: Condition
    previous: ConditionState
    reason: str
    rule: RuleConfig | None = None
    flapping: bool = False

    @property
    def event_type(self) -> str:
        """The CloudEvents type, e.g. ``io.nodemedic.condition.firing``."""
        return CONDITION_EVENT_PREFIX + self.condition.state.value

    def event_data(self) -> dict[str, Any]:
        """The event payload: JSON-serialisable, non-finite numbers as None."""
        cond, rule = self.condition, self.rule
        bounds: dict[str, Any] = {"op": None, "threshold": None, "clear": None, "for": None}
        if rule is not None:
            clear = rule.threshold if rule.clear is None else rule.clear
            bounds = {
                "op": rule.op,
                "threshold": _finite(rule.threshold),
                "clear": _finite(clear),
                "for": rule.for_.total_seconds(),
            }
        return {
            "rule": cond.rule,
            "state": cond.state.value,
            "previous": self.previous.value,
            "severity": cond.severity.value,
            "labels": dict(cond.labels),
            "value": _finite(cond.value),
            **bounds,
            "description": cond.description,
            "reason": self.reason,
            "since": datetime.fromtimestamp(cond.since, UTC).isoformat().replace("+00:00", "Z"),
            "flapping": self.flapping,
        }


class ConditionTracker:
    """Turns samples into conditions and reports every state change as a :class:`Transition`.

    Args:
        rules: the rules; names must be unique.
        flap_window: seconds over which firings are counted for flap damping.
        flap_limit: firings within ``flap_window`` that make a condition flapping.
        restored: conditions from before a restart. Those whose rule still exists (and still
            matches their series) carry on as they were, with the rule's current severity and
            description; the rest wait for :meth:`retire_removed`.

    Raises:
        ValueError: on duplicate rule names, a negative window or a limit below 1.
    """

    def __init__(
        self,
        rules: Sequence[RuleConfig],
        *,
        flap_window: float,
        flap_limit: int,
        restored: Iterable[Condition] = (),
    ) -> None:
        if not 0 <= flap_window < math.inf:
            raise ValueError(f"flap_window must be finite seconds >= 0, got {flap_window}")
        if flap_limit < 1:
            raise ValueError(f"flap_limit must be at least 1, got {flap_limit}")
        self._rules = tuple(rules)
        self._window = float(flap_window)
        self._limit = flap_limit
        self._compiled: dict[str, CompiledRule] = {}
        self._by_metric: dict[str, list[CompiledRule]] = {}
        for rule in self._rules:
            if rule.name in self._compiled:
                raise ValueError(f"duplicate rule name {rule.name!r}; rule names must be unique")
            compiled = CompiledRule.of(rule)
            self._compiled[rule.name] = compiled
            self._by_metric.setdefault(rule.metric, []).append(compiled)
        self._matching: dict[tuple[str, LabelSet], tuple[CompiledRule, ...]] = {}
        self._tables: dict[str, dict[LabelSet, Condition]] = {name: {} for name in self._compiled}
        self._retiring: dict[ConditionKey, tuple[Condition, str, RuleConfig | None]] = {}
        for cond in restored:
            known = self._compiled.get(cond.rule)
            if known is None:
                self._retiring[cond.key] = (cond, "rule removed", None)
            elif not known.matches(cond.labels):
                reason = "rule no longer matches the series"
                self._retiring[cond.key] = (cond, reason, known.rule)
            else:
                rule = known.rule
                self._tables[cond.rule][cond.labels] = replace(
                    cond, severity=rule.severity, description=rule.description
                )

    def rules(self) -> Sequence[RuleConfig]:
        """The rules, in the order given."""
        return self._rules

    def conditions(self) -> list[Condition]:
        """Every condition, sorted by (rule, labels); includes those not yet retired."""
        found = [cond for table in self._tables.values() for cond in table.values()]
        found.extend(cond for cond, _, _ in self._retiring.values())
        return sorted(found, key=lambda cond: cond.key)

    def observe(
        self, metrics: Collection[str], samples: Sequence[Sample], now: float
    ) -> list[Transition]:
        """Evaluate one batch of samples.

        Args:
            metrics: metric names this batch covers completely (one probe's successful run);
                conditions of these metrics whose series is missing from ``samples`` have
                gone away. Conditions of other metrics without a sample are left as they are.
            samples: the readings; for a series that appears twice the last one counts.
            now: epoch seconds.

        Returns:
            The state changes, sorted by (rule, labels).
        """
        latest: dict[tuple[str, LabelSet], float] = {}
        by_metric = self._by_metric
        for sample in samples:
            if sample.metric in by_metric:
                latest[sample.metric, sample.labels] = sample.value
        out: list[Transition] = []
        seen: set[ConditionKey] = set()
        for series, value in latest.items():
            labels = series[1]
            for compiled in self._rules_matching(series):
                seen.add((compiled.rule.name, labels))
                self._evaluate(compiled, labels, value, now, out)
        for metric in metrics:
            for compiled in self._by_metric.get(metric, ()):
                self._drop_gone(compiled.rule, seen, now, out)
        out.sort(key=lambda transition: transition.condition.key)
        return out

    def waiting(self, metrics: Iterable[str]) -> bool:
        """Whether a condition of a rule over one of ``metrics`` waits on time alone.

        That is one pending for its rule's ``for``, or a flapping one firing while it waits
        to stay clear (``pending_since`` set): observing the same readings again later can
        move it, while every other condition moves only on a new reading.
        """
        for metric in metrics:
            for compiled in self._by_metric.get(metric, ()):
                for cond in self._tables[compiled.rule.name].values():
                    if cond.pending_since is not None:
                        return True
        return False

    def retire_removed(self, now: float) -> list[Transition]:
        """Drop restored conditions whose rule is gone (or no longer matches their series).

        Returns:
            A ``resolved`` transition for each that was pending or firing, sorted by
            (rule, labels); the others go silently.
        """
        out = [
            Transition(
                replace(cond, state=_RESOLVED, since=now, pending_since=None),
                cond.state,
                reason,
                rule,
            )
            for cond, reason, rule in self._retiring.values()
            if cond.active
        ]
        self._retiring.clear()
        out.sort(key=lambda transition: transition.condition.key)
        return out

    def _rules_matching(self, series: tuple[str, LabelSet]) -> tuple[CompiledRule, ...]:
        """The rules over the series' metric whose labels it satisfies, remembered per series.

        Label matching (regexes included) is the costly part of a sample; a series keeps its
        labels, so the answer is computed once. The memo is dropped whole when it outgrows
        :data:`_MATCH_MEMO_SIZE` (series that come and go, e.g. per-process labels).
        """
        found = self._matching.get(series)
        if found is None:
            if len(self._matching) >= _MATCH_MEMO_SIZE:
                self._matching.clear()
            labels = series[1]
            found = tuple(c for c in self._by_metric[series[0]] if c.matches(labels))
            self._matching[series] = found
        return found

    def _evaluate(
        self,
        compiled: CompiledRule,
        labels: LabelSet,
        value: float,
        now: float,
        out: list[Transition],
    ) -> None:
        rule = compiled.rule
        table = self._tables[rule.name]
        current = table.get(labels)
        if current is None:
            current = Condition(
                rule=rule.name,
                labels=labels,
                state=_OK,
                severity=rule.severity,
                value=None,
                since=now,
                description=rule.description,
            )
        new, reason, flapping = self._advance(compiled, current, float(value), now)
        table[labels] = new
        if reason is not None:
            out.append(Transition(new, current.state, reason, rule, flapping))

    def _advance(self, compiled: CompiledRule, cond: Condition, value: float, now: float) -> _Step:
        """The condition after seeing ``value``, the reason if its state changed, flapping."""
        if cond.state is _FIRING:
            return self._while_firing(compiled, cond, value, now)
        hold = compiled.hold_text
        if cond.state is _PENDING:
            if not compiled.breach(value):
                reason = f"{compiled.lapsed(value)}; cleared before the {hold} hold time"
                return self._resolve(cond, _known(value), now, reason)
            started = cond.since if cond.pending_since is None else cond.pending_since
            if now - started >= compiled.hold:
                return self._fire(cond, value, now, f"{compiled.breached(value)} for {hold}")
        elif compiled.breach(value):  # from ok or resolved
            if compiled.hold <= 0:
                return self._fire(cond, value, now, compiled.breached(value))
            flaps = self._recent(cond.flaps, now)
            pending = replace(
                cond, state=_PENDING, value=value, since=now, pending_since=now, flaps=flaps
            )
            reason = f"{compiled.breached(value)}; fires if it holds for {hold}"
            return pending, reason, len(flaps) >= self._limit
        return _with_value(cond, _known(value)), None, False

    def _while_firing(
        self, compiled: CompiledRule, cond: Condition, value: float, now: float
    ) -> _Step:
        if math.isnan(value):  # unknown is not healthy: hold as is
            return _with_value(cond, None), None, False
        if compiled.holds(value):
            held = _with_value(cond, value)
            if held.pending_since is not None:  # back above clear: a flap wait starts over
                held = replace(held, pending_since=None)
            return held, None, False
        if cond.pending_since is None:
            if not self._is_flapping(cond.flaps, now):
                return self._resolve(cond, value, now, compiled.cleared(value))
            # Flapping: resolve only after a whole window of clear values.
            return replace(cond, value=value, pending_since=now), None, False
        if now - cond.pending_since < self._window:
            return _with_value(cond, value), None, False
        reason = f"{compiled.cleared(value)} for {format_duration(self._window)} (flapping)"
        return self._resolve(cond, value, now, reason, flapping=True)

    def _fire(self, cond: Condition, value: float, now: float, reason: str) -> _Step:
        flaps = (*self._recent(cond.flaps, now), now)
        fired = replace(
            cond, state=_FIRING, value=value, since=now, pending_since=None, flaps=flaps
        )
        return fired, reason, len(flaps) >= self._limit

    def _resolve(
        self,
        cond: Condition,
        value: float | None,
        now: float,
        reason: str,
        *,
        flapping: bool = False,
    ) -> _Step:
        flaps = self._recent(cond.flaps, now)
        resolved = replace(
            cond, state=_RESOLVED, value=value, since=now, pending_since=None, flaps=flaps
        )
        return resolved, reason, flapping

    def _drop_gone(
        self, rule: RuleConfig, seen: set[ConditionKey], now: float, out: list[Transition]
    ) -> None:
        table = self._tables[rule.name]
        for labels in [labels for labels in table if (rule.name, labels) not in seen]:
            cond = table.pop(labels)
            if cond.active:
                gone = replace(cond, state=_RESOLVED, value=None, since=now, pending_since=None)
                flapping = self._is_flapping(cond.flaps, now)
                out.append(Transition(gone, cond.state, "series gone", rule, flapping))

    def _recent(self, flaps: tuple[float, ...], now: float) -> tuple[float, ...]:
        return tuple(at for at in flaps if now - at < self._window)

    def _is_flapping(self, flaps: tuple[float, ...], now: float) -> bool:
        return len(self._recent(flaps, now)) >= self._limit


def _with_value(cond: Condition, value: float | None) -> Condition:
    # Most samples change nothing; skip the copy then.
    return cond if cond.value == value else replace(cond, value=value)


def _known(value: float) -> float | None:
    return None if math.isnan(value) else value


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
