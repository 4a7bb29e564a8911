"""One rule, compiled for cheap evaluation: label matching, comparisons and their wording.

:mod:`agent.rules` owns the condition state machine; this module answers the questions it
asks of a rule about one sample (does the series match, is the value breaching, does a
firing condition hold) and words the answers for transition reasons.
"""

from __future__ import annotations

__all__ = ["CompiledRule", "format_duration", "format_number"]

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from agent.config import RuleConfig
from agent.model import LabelSet

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
_NEGATION = {">": "<=", ">=": "<", "<": ">=", "<=": ">", "==": "!=", "!=": "=="}


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule with its label regexes compiled and its comparison resolved.

    Attributes:
        rule: the rule as configured.
        exact: labels that must equal a value.
        patterns: labels whose value must fully match a regex (``~`` values in the config).
        clear: the value a firing condition must cross to resolve (the threshold if unset).
        hold: the rule's ``for`` in seconds.
        hold_text: ``hold`` as a duration is written in the config (``2m``), for reasons.
    """

    rule: RuleConfig
    exact: tuple[tuple[str, str], ...]
    patterns: tuple[tuple[str, re.Pattern[str]], ...]
    clear: float
    hold: float
    hold_text: str
    _compare: Callable[[float, float], bool]

    @classmethod
    def of(cls, rule: RuleConfig) -> CompiledRule:
        """Compile ``rule``."""
        exact = tuple((k, v) for k, v in rule.labels.items() if not v.startswith("~"))
        patterns = tuple((k, re.compile(v[1:])) for k, v in rule.labels.items() if v[:1] == "~")
        clear = rule.threshold if rule.clear is None else rule.clear
        hold = rule.for_.total_seconds()
        return cls(rule, exact, patterns, clear, hold, format_duration(hold), _COMPARE[rule.op])

    def matches(self, labels: LabelSet) -> bool:
        """Whether a series' labels satisfy the rule's; a missing label reads as ""."""
        if not self.exact and not self.patterns:
            return True
        values = dict(labels)
        return all(values.get(name, "") == want for name, want in self.exact) and all(
            pattern.fullmatch(values.get(name, "")) for name, pattern in self.patterns
        )

    def breach(self, value: float) -> bool:
        """``value <op> threshold``; never for NaN."""
        return not math.isnan(value) and self._compare(value, self.rule.threshold)

    def holds(self, value: float) -> bool:
        """``value <op> clear``: a firing condition stays firing; never for NaN."""
        return not math.isnan(value) and self._compare(value, self.clear)

    def breached(self, value: float) -> str:
        """``value 0.93 > 0.9``."""
        return f"value {format_number(value)} {self.rule.op} {format_number(self.rule.threshold)}"

    def lapsed(self, value: float) -> str:
        """``value 0.84 <= 0.9``, or ``value unknown`` for NaN."""
        if math.isnan(value):
            return "value unknown"
        threshold = format_number(self.rule.threshold)
        return f"value {format_number(value)} {_NEGATION[self.rule.op]} {threshold}"

    def cleared(self, value: float) -> str:
        """``value 0.84 <= clear 0.85``."""
        clear = format_number(self.clear)
        return f"value {format_number(value)} {_NEGATION[self.rule.op]} clear {clear}"


def format_number(value: float) -> str:
    """``0.93``, ``10485760``, ``1.5e-07``: short, and exact for whole numbers."""
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def format_duration(seconds: float) -> str:
    """``500ms``, ``30s``, ``2m``, ``1h30m``: as durations are written in the config."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms" if seconds > 0 else "0s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{int(hours)}h" if hours else "") + (f"{int(minutes)}m" if minutes else "")
    return text + (f"{format_number(secs)}s" if secs else "")
