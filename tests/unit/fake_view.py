"""An in-memory :class:`agent.view.AgentView` for tests of the API and the metrics collector."""

from __future__ import annotations

__all__ = ["BROKEN_VIEW_MESSAGE", "FakeAgentView", "busy_view", "make_event"]

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from agent.model import (
    Condition,
    ConditionState,
    Event,
    MqttLinkState,
    MqttStatus,
    ProbeStatus,
    Sample,
    Severity,
    labelset,
)
from agent.probes.catalog import CATALOG, MetricKind

BROKEN_VIEW_MESSAGE = "the fake view was told to break"

NODE = "node-a"
T0 = 1_700_000_000.0


@dataclass
class FakeAgentView:
    """A stand-in for the runtime implementing :class:`agent.view.AgentView`.

    Tests set the lists and mappings directly. ``events()`` follows the protocol (oldest
    first; after ``since`` or else the newest ``limit``) and treats a ``type`` ending in
    ``.`` as a prefix; every call is recorded in ``event_queries``. A method whose name is
    in ``broken`` raises :class:`RuntimeError`, for testing failure handling.
    ``one_shot_samples`` makes ``latest_samples()`` a generator that can be read once.
    """

    node_name: str = NODE
    ready: bool = True
    not_ready_reason: str = ""
    samples: list[Sample] = field(default_factory=list)
    statuses: list[ProbeStatus] = field(default_factory=list)
    tracked: list[Condition] = field(default_factory=list)
    stored_events: list[Event] = field(default_factory=list)
    emitted: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    lag: float = 0.0
    mqtt: MqttStatus | None = None
    one_shot_samples: bool = False
    broken: set[str] = field(default_factory=set)
    event_queries: list[tuple[str | None, int | None, int]] = field(default_factory=list)

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) as set."""
        self._maybe_break("readiness")
        return self.ready, self.not_ready_reason

    def latest_samples(self) -> Iterable[Sample]:
        """The samples as set; a one-shot generator when ``one_shot_samples``."""
        self._maybe_break("latest_samples")
        if self.one_shot_samples:
            return _once(self.samples)
        return list(self.samples)

    def probe_statuses(self) -> Sequence[ProbeStatus]:
        """The statuses as set."""
        self._maybe_break("probe_statuses")
        return list(self.statuses)

    def conditions(self) -> Sequence[Condition]:
        """The conditions as set."""
        self._maybe_break("conditions")
        return list(self.tracked)

    def events(self, *, type: str | None, since: int | None, limit: int) -> Sequence[Event]:
        """Stored events filtered like the store does, oldest first."""
        self._maybe_break("events")
        self.event_queries.append((type, since, limit))
        chosen = sorted(self.stored_events, key=lambda event: event.sequence)
        if type is not None:
            if type.endswith("."):
                chosen = [event for event in chosen if event.type.startswith(type)]
            else:
                chosen = [event for event in chosen if event.type == type]
        if since is not None:
            return [event for event in chosen if event.sequence > since][:limit]
        return chosen[-limit:]

    def mqtt_status(self) -> MqttStatus | None:
        """The MQTT status as set (None: publishing not configured)."""
        self._maybe_break("mqtt_status")
        return self.mqtt

    def event_counts(self) -> Mapping[str, int]:
        """The counts as set."""
        self._maybe_break("event_counts")
        return dict(self.emitted)

    def bus_dropped(self) -> Mapping[str, int]:
        """The drop counts as set."""
        self._maybe_break("bus_dropped")
        return dict(self.dropped)

    def loop_lag(self) -> float:
        """The lag as set."""
        self._maybe_break("loop_lag")
        return self.lag

    def _maybe_break(self, method: str) -> None:
        if method in self.broken:
            raise RuntimeError(BROKEN_VIEW_MESSAGE)


def _once(samples: list[Sample]) -> Iterator[Sample]:
    yield from samples


def make_event(sequence: int, type: str = "io.nodemedic.condition.firing") -> Event:
    """An event of ``type`` with the given sequence, one second after the previous one."""
    return Event(
        id=f"01HZ{sequence:022d}",
        source=f"nodemedic://{NODE}",
        type=type,
        time=T0 + sequence,
        sequence=sequence,
        subject=f"rule-{sequence}",
        data={"sequence": sequence},
    )


AWKWARD_LABEL_VALUE = 'a "quoted" \\path\\ with\na newline'
"""A label value that needs every escape the text exposition format has."""


def busy_view() -> FakeAgentView:
    """A view like a busy host's: every catalog metric, awkward label values, all agent state.

    Every labelled catalog metric has two series, one of them with label values full of
    quotes, backslashes and newlines; counters have large values.
    """
    samples: list[Sample] = []
    for spec in CATALOG.values():
        value = 123456789.0 if spec.kind is MetricKind.COUNTER else 0.25
        if not spec.labels:
            samples.append(Sample(spec.name, value))
            continue
        for variant in ("plain", AWKWARD_LABEL_VALUE):
            labels = labelset({name: f"{name}-{variant}" for name in spec.labels})
            samples.append(Sample(spec.name, value, labels))
    statuses = [
        ProbeStatus("cpu", 10.0, last_run=T0, duration=0.002, runs=40, samples=4),
        ProbeStatus(
            "filesystem", 30.0, last_run=T0, duration=0.5, error="timeout", runs=9, failures=3
        ),
        ProbeStatus("sensors", 30.0),
    ]
    tracked = [
        Condition(
            "disk_full",
            labelset(mountpoint="/"),
            ConditionState.FIRING,
            Severity.CRITICAL,
            0.97,
            T0,
        ),
        Condition(
            "disk_full",
            labelset(mountpoint=AWKWARD_LABEL_VALUE),
            ConditionState.PENDING,
            Severity.CRITICAL,
            0.91,
            T0,
        ),
        Condition("cpu_hot", (), ConditionState.OK, Severity.WARNING, 0.1, T0),
    ]
    return FakeAgentView(
        samples=samples,
        statuses=statuses,
        tracked=tracked,
        stored_events=[make_event(sequence) for sequence in range(1, 6)],
        emitted={"io.nodemedic.condition.firing": 3, "io.nodemedic.probe.failed": 1},
        dropped={"history": 2, AWKWARD_LABEL_VALUE: 1},
        lag=0.004,
        mqtt=MqttStatus(
            state=MqttLinkState.DISCONNECTED,
            broker="mqtt://127.0.0.1:1883",
            reason="cannot reach mqtt://127.0.0.1:1883: [Errno 111] Connection refused",
            reconnects=7,
            publishes={"acked": 1234, "failed": 3},
            connect_failures={"network": 7},
            outbox_depth=42,
            outbox_bytes=21000,
            outbox_oldest_age=12.5,
            outbox_shed=2,
            outbox_used_ratio=0.42,
        ),
    )
