"""How the store's values map to SQLite rows: events, conditions, JSON columns and filters."""

from __future__ import annotations

__all__ = [
    "CONDITION_COLUMNS",
    "EVENT_COLUMNS",
    "condition_from_row",
    "condition_row",
    "dumps",
    "event_from_row",
    "json_safe",
    "type_filter",
]

import json
import math
from collections.abc import Mapping
from typing import Any, Final

from agent.model import Condition, ConditionState, Event, LabelSet, Severity

EVENT_COLUMNS: Final = "sequence, id, source, type, subject, time, data"
"""The ``events`` columns, in the order rows are written and read."""
CONDITION_COLUMNS: Final = (
    "rule, labels, state, severity, value, since, pending_since, description, flaps"
)
"""The ``conditions`` columns, in the order rows are written and read."""


# --- JSON ---------------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """A copy of ``value`` with NaN and infinities replaced by None (JSON has no such numbers).

    Mappings become dicts and tuples lists, as JSON would return them.
    """
    # Scalars by exact type first (most of any event's data): ``isinstance(x, Mapping)``
    # goes through the ABC machinery and cost a microsecond for every string.
    kind = type(value)
    if kind in _JSON_SCALARS:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if kind is dict or (kind is not list and isinstance(value, Mapping)):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


_JSON_SCALARS: Final = frozenset({str, int, bool, type(None)})
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> str:
    """Compact JSON for a column; raises ValueError on NaN or infinities."""
    # One encoder for every call: json.dumps builds a new one whenever it is given options.
    return _ENCODER.encode(value)


# --- row mapping --------------------------------------------------------------------


def type_filter(type: str | None) -> tuple[list[str], list[Any]]:
    """WHERE terms and parameters for an event type, exact or a ``.``/``*`` prefix."""
    if type is None:
        return [], []
    if not type.endswith((".", "*")):
        return ["type = ?"], [type]
    prefix = type.removesuffix("*")
    if not prefix:
        return [], []
    # A range on the index instead of LIKE, which is case-insensitive and would scan.
    # UTF-8 byte order equals code point order, so bumping the last character bounds it.
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1) if ord(prefix[-1]) < 0x10FFFF else None
    if upper is None:
        return ["type >= ?"], [prefix]
    return ["type >= ?", "type < ?"], [prefix, upper]


def event_from_row(row: tuple[Any, ...]) -> Event:
    """The event in a row selected with :data:`EVENT_COLUMNS`."""
    sequence, event_id, source, type_, subject, time, data = row
    return Event(
        id=event_id,
        source=source,
        type=type_,
        time=float(time),
        sequence=int(sequence),
        subject=subject,
        data=json.loads(data),
    )


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def condition_row(condition: Condition) -> tuple[Any, ...]:
    """The row for ``condition``, in :data:`CONDITION_COLUMNS` order; non-finite values dropped."""
    if not math.isfinite(condition.since):
        raise ValueError(f"condition {condition.rule} has a non-finite since: {condition.since}")
    value = None if condition.value is None or math.isnan(condition.value) else condition.value
    return (
        condition.rule,
        dumps(dict(condition.labels)),
        condition.state.value,
        condition.severity.value,
        value,
        condition.since,
        _finite_or_none(condition.pending_since),
        condition.description,
        dumps([flap for flap in condition.flaps if math.isfinite(flap)]),
    )


def condition_from_row(row: tuple[Any, ...]) -> Condition:
    """The condition in a row selected with :data:`CONDITION_COLUMNS`."""
    rule, labels, state, severity, value, since, pending_since, description, flaps = row
    label_set: LabelSet = tuple(sorted((str(k), str(v)) for k, v in json.loads(labels).items()))
    return Condition(
        rule=rule,
        labels=label_set,
        state=ConditionState(state),
        severity=Severity(severity),
        value=None if value is None else float(value),
        since=float(since),
        pending_since=None if pending_since is None else float(pending_since),
        description=description,
        flaps=tuple(float(flap) for flap in json.loads(flaps)),
    )
