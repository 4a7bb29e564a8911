"""The shared vocabulary every component speaks: samples, severities, conditions and events."""

from __future__ import annotations

__all__ = [
    "CONDITION_EVENT_PREFIX",
    "Condition",
    "ConditionKey",
    "ConditionState",
    "Event",
    "LabelSet",
    "MqttLinkState",
    "MqttStatus",
    "ProbeStatus",
    "Sample",
    "Severity",
    "labelset",
]

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

LabelSet = tuple[tuple[str, str], ...]
"""Labels as a sorted tuple of (name, value) pairs: hashable and order-independent."""

CONDITION_EVENT_PREFIX = "io.nodemedic.condition."


def labelset(labels: Mapping[str, str] | None = None, /, **more: str) -> LabelSet:
    """Build a canonical (sorted) label set from a mapping and/or keywords."""
    merged = dict(labels or {})
    merged.update(more)
    return tuple(sorted(merged.items()))


class Severity(enum.StrEnum):
    """How much a condition matters; ordered from least to most severe."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 for info, 1 for warning, 2 for critical."""
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


class ConditionState(enum.StrEnum):
    """Where a condition stands: ok -> pending -> firing -> resolved."""

    OK = "ok"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of one series.

    Attributes:
        metric: the Prometheus metric name, exactly as /metrics exposes it.
        value: the reading in base units (seconds, bytes, ratios 0-1).
        labels: the series' labels, canonical (see :func:`labelset`).
    """

    metric: str
    value: float
    labels: LabelSet = ()

    @classmethod
    def of(cls, metric: str, value: float, /, **labels: str) -> Sample:
        """Shorthand: ``Sample.of("nodemedic_load1", 0.3)``."""
        return cls(metric, float(value), labelset(labels))

    @property
    def label_dict(self) -> dict[str, str]:
        """The labels as a plain dict."""
        return dict(self.labels)


ConditionKey = tuple[str, LabelSet]
"""A condition is identified by its rule name and the labels of the series it watches."""


@dataclass(frozen=True, slots=True)
class Condition:
    """The state of one rule applied to one series.

    Attributes:
        rule: the rule's name.
        labels: the labels of the series the rule matched.
        state: the current state.
        severity: the rule's severity.
        value: the last value seen (None if the series has gone away).
        since: epoch seconds of the last state transition.
        pending_since: epoch seconds when the current breach began (None when not breaching).
        description: the rule's description, for humans.
        flaps: epoch seconds of recent firing transitions (for flap damping).
    """

    rule: str
    labels: LabelSet
    state: ConditionState
    severity: Severity
    value: float | None
    since: float
    pending_since: float | None = None
    description: str = ""
    flaps: tuple[float, ...] = ()

    @property
    def key(self) -> ConditionKey:
        """(rule, labels): unique per condition."""
        return (self.rule, self.labels)

    @property
    def active(self) -> bool:
        """True while pending or firing."""
        return self.state in (ConditionState.PENDING, ConditionState.FIRING)

    def to_json(self) -> dict[str, Any]:
        """The condition as the API and events show it."""
        return {
            "name": self.rule,
            "state": self.state.value,
            "severity": self.severity.value,
            "labels": dict(self.labels),
            "value": self.value,
            "since": _iso(self.since),
            "description": self.description,
        }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened, as a CloudEvents 1.0 envelope plus a per-node sequence.

    Attributes:
        id: unique and sortable by creation time.
        source: ``nodemedic://<node>``.
        type: e.g. ``io.nodemedic.condition.firing``.
        time: epoch seconds.
        sequence: per-node, gap-free, starting at 1; consumers detect loss by gaps.
        subject: what the event is about (e.g. the rule name), or None.
        data: JSON-serialisable payload.
    """

    id: str
    source: str
    type: str
    time: float
    sequence: int
    subject: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_cloudevent(self) -> dict[str, Any]:
        """The structured-mode CloudEvents JSON object."""
        envelope: dict[str, Any] = {
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": _iso(self.time),
            "datacontenttype": "application/json",
            "sequence": self.sequence,
        }
        if self.subject is not None:
            envelope["subject"] = self.subject
        envelope["data"] = dict(self.data)
        return envelope


@dataclass(frozen=True, slots=True)
class ProbeStatus:
    """How a probe has been doing.

    Attributes:
        name: the probe's name.
        interval: seconds between runs.
        last_run: epoch seconds the last run started, None before the first.
        duration: seconds the last run took, None before the first.
        error: the last run's error, None when it succeeded.
        runs: runs since the agent started.
        failures: failed or timed-out runs since the agent started.
        samples: samples the last successful run produced.
    """

    name: str
    interval: float
    last_run: float | None = None
    duration: float | None = None
    error: str | None = None
    runs: int = 0
    failures: int = 0
    samples: int = 0

    @property
    def up(self) -> bool:
        """True when the last run succeeded."""
        return self.last_run is not None and self.error is None

    def to_json(self) -> dict[str, Any]:
        """The status as ``GET /v1/probes`` shows it."""
        return {
            "name": self.name,
            "interval": self.interval,
            "last_run": _iso(self.last_run) if self.last_run is not None else None,
            "duration": self.duration,
            "error": self.error,
            "up": self.up,
            "runs": self.runs,
            "failures": self.failures,
            "samples": self.samples,
        }


class MqttLinkState(enum.StrEnum):
    """Where the agent's link to the MQTT broker stands."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    """The broker cannot be reached; retrying with backoff, events wait in the outbox."""
    MISCONFIGURED = "misconfigured"
    """The broker refused the credentials or the TLS handshake failed; retrying slowly."""
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class MqttStatus:
    """The MQTT link and its outbox, for /readyz and /metrics.

    Attributes:
        state: the link's state.
        broker: the broker connected to or last tried.
        reason: why the link is not connected, for humans; None while connected.
        session: the session id of the current connection (in the birth message and will).
        reconnects: connection attempts after the first.
        publishes: event publishes since start by result (``acked``, ``failed``, ``refused``).
        connect_failures: failed connection attempts since start by kind
            (``network``, ``auth``, ``tls``, ``refused``).
        outbox_depth: events waiting for a PUBACK.
        outbox_bytes: their payload bytes.
        outbox_oldest_age: seconds the oldest waiting event has waited, None when empty.
        outbox_shed: events shed because the outbox was full (since the store was created).
        outbox_used_ratio: the fuller of count and bytes over their bounds.
    """

    state: MqttLinkState
    broker: str | None = None
    reason: str | None = None
    session: str | None = None
    reconnects: int = 0
    publishes: Mapping[str, int] = field(default_factory=dict)
    connect_failures: Mapping[str, int] = field(default_factory=dict)
    outbox_depth: int = 0
    outbox_bytes: int = 0
    outbox_oldest_age: float | None = None
    outbox_shed: int = 0
    outbox_used_ratio: float = 0.0

    @property
    def connected(self) -> bool:
        """True while connected to a broker."""
        return self.state is MqttLinkState.CONNECTED

    def to_json(self) -> dict[str, Any]:
        """The status as ``GET /readyz`` shows it."""
        return {
            "state": self.state.value,
            "broker": self.broker,
            "reason": self.reason,
            "session": self.session,
            "outbox": {
                "depth": self.outbox_depth,
                "bytes": self.outbox_bytes,
                "oldest_age_seconds": self.outbox_oldest_age,
                "shed": self.outbox_shed,
                "used_ratio": self.outbox_used_ratio,
            },
        }
