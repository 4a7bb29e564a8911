"""Prometheus exposition of the latest samples and of the agent's own state.

Nothing is stored here: :class:`AgentCollector` reads the :class:`~agent.view.AgentView`
at scrape time and builds fresh metric families, taking help text and type from the
metric catalog.
"""

from __future__ import annotations

__all__ = [
    "AGENT_METRIC_NAMES",
    "PROCESS_METRIC_NAMES",
    "AgentCollector",
    "MetricsRegistry",
    "build_registry",
]

import logging
import platform
from collections.abc import Iterable, Iterator, Mapping, Sequence

from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from agent import __version__
from agent.metrics_text import MetricsRegistry, SampleExposition
from agent.model import (
    Condition,
    ConditionState,
    LabelSet,
    MqttStatus,
    ProbeStatus,
    Sample,
    Severity,
)
from agent.probes.catalog import CATALOG, MetricKind, MetricSpec
from agent.view import AgentView

log = logging.getLogger(__name__)

_PROBE_UP = "nodemedic_probe_up"
_TOTAL = "_total"

AGENT_METRIC_NAMES: frozenset[str] = frozenset(
    {
        _PROBE_UP,
        "nodemedic_probe_duration_seconds",
        "nodemedic_probe_runs_total",
        "nodemedic_probe_failures_total",
        "nodemedic_condition_state",
        "nodemedic_conditions_firing",
        "nodemedic_conditions_firing_by_severity",
        "nodemedic_events_total",
        "nodemedic_bus_dropped_events_total",
        "nodemedic_event_loop_lag_seconds",
        "nodemedic_build_info",
        "nodemedic_agent_ready",
        "nodemedic_mqtt_connected",
        "nodemedic_mqtt_publishes_total",
        "nodemedic_mqtt_reconnects_total",
        "nodemedic_mqtt_connect_failures_total",
        "nodemedic_mqtt_outbox_events",
        "nodemedic_mqtt_outbox_bytes",
        "nodemedic_mqtt_outbox_oldest_age_seconds",
        "nodemedic_mqtt_outbox_shed_events_total",
    }
)
"""Exposed names of the series the collector derives from agent state, not from samples."""

PROCESS_METRIC_NAMES: frozenset[str] = frozenset(
    {
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    }
)
"""The agent process's own CPU, memory and descriptors (prometheus_client's standard names)."""

_Family = GaugeMetricFamily | CounterMetricFamily


def build_registry(view: AgentView) -> MetricsRegistry:
    """A fresh registry (never the process-global one) exposing ``view``.

    Args:
        view: the agent state to read at every scrape.

    Returns:
        A registry holding one :class:`AgentCollector` and the process collector.
    """
    registry = MetricsRegistry(AgentCollector(view))
    # The agent's own CPU and memory, for the dashboard and the overhead it promises.
    ProcessCollector(registry=registry)
    return registry


class AgentCollector:
    """Builds every family at scrape time from the latest samples and the agent's state.

    Samples are grouped by metric in one pass; type and help come from the catalog and
    label values are ordered by the catalog's label names. Samples of metrics missing
    from the catalog, or whose label names differ from the catalog's, are skipped and
    logged at debug level once per metric and scrape.

    Args:
        view: the agent state to read.
        catalog: metric specs by exposed name; a catalog entry that cannot be exposed
            as specified (a counter not ending in ``_total``, a gauge ending in it, or a
            name this collector derives itself, other than ``nodemedic_probe_up``) is
            dropped with a warning.
    """

    def __init__(self, view: AgentView, *, catalog: Mapping[str, MetricSpec] = CATALOG) -> None:
        self._view = view
        self._catalog = {name: spec for name, spec in catalog.items() if _exposable(name, spec)}
        self._text = SampleExposition(self._catalog)
        self._probe_up_help = (
            catalog[_PROBE_UP].help
            if _PROBE_UP in catalog
            else "1 when the probe's last run succeeded."
        )

    def collect(self) -> Iterator[Metric]:
        """Yield every family, read from the view now."""
        sampled: dict[str, float] = {}
        yield from self._sample_families(self._view.latest_samples(), sampled)
        yield from self.state_families(sampled)

    def render_samples(self) -> tuple[str, dict[str, float]]:
        """The sample families as exposition text (what :meth:`collect` yields first).

        Returns:
            The text, and ``nodemedic_probe_up`` readings found among the samples, for
            :meth:`state_families`.
        """
        text, sampled_up, skipped = self._text.render(self._view.latest_samples())
        _log_skipped(skipped, self._catalog)
        return text, sampled_up

    def state_families(self, sampled_up: Mapping[str, float]) -> Iterator[Metric]:
        """The families derived from agent state (what :meth:`collect` yields after samples).

        Args:
            sampled_up: probe_up readings found among the samples, by probe.
        """
        view = self._view
        statuses = view.probe_statuses()
        # Probe statuses are authoritative for probe_up; a sample of it only fills in
        # probes without a status, so every probe has exactly one series.
        probe_up = {status.name: 1.0 if status.up else 0.0 for status in statuses}
        for probe, value in sampled_up.items():
            probe_up.setdefault(probe, value)
        yield from _probe_families(statuses, probe_up, self._probe_up_help)
        yield from _condition_families(view.conditions())
        events = CounterMetricFamily(
            "nodemedic_events", "Events emitted since the agent started, by type.", labels=["type"]
        )
        for event_type, count in view.event_counts().items():
            events.add_metric([event_type], count)
        yield events
        dropped = CounterMetricFamily(
            "nodemedic_bus_dropped_events",
            "Events the bus dropped for a subscriber whose queue was full, since start.",
            labels=["subscriber"],
        )
        for subscriber, count in view.bus_dropped().items():
            dropped.add_metric([subscriber], count)
        yield dropped
        yield GaugeMetricFamily(
            "nodemedic_event_loop_lag_seconds",
            "Last measured delay of the agent's event loop.",
            value=view.loop_lag(),
        )
        build = GaugeMetricFamily(
            "nodemedic_build_info",
            "Always 1; the labels give the agent's version and Python version.",
            labels=["version", "python"],
        )
        build.add_metric([__version__, platform.python_version()], 1.0)
        yield build
        ready, _ = view.readiness()
        yield GaugeMetricFamily(
            "nodemedic_agent_ready",
            "1 when the agent is ready (GET /readyz answers 200), else 0.",
            value=1.0 if ready else 0.0,
        )
        mqtt = view.mqtt_status()
        if mqtt is not None:
            yield from _mqtt_families(mqtt)

    def _sample_families(
        self, samples: Iterable[Sample], probe_up: dict[str, float]
    ) -> list[_Family]:
        """The families of the samples; fills ``probe_up`` from samples of it."""
        catalog = self._catalog
        series: dict[str, dict[tuple[str, ...], float]] = {}
        unknown: set[str] = set()
        mislabelled: set[str] = set()
        for sample in samples:
            name = sample.metric
            spec = catalog.get(name)
            if spec is None:
                unknown.add(name)
                continue
            values = _label_values(spec.labels, sample.labels)
            if values is None:
                mislabelled.add(name)
                continue
            if name == _PROBE_UP:
                probe_up.setdefault(values[0], sample.value)
                continue
            rows = series.get(name)
            if rows is None:
                rows = series[name] = {}
            # A repeated series keeps its last value: duplicates would fail the scrape.
            rows[values] = sample.value
        _log_skipped(unknown | mislabelled, catalog)
        families: list[_Family] = []
        for name, rows in series.items():
            family = _family(catalog[name])
            for values, value in rows.items():
                family.add_metric(values, value)
            families.append(family)
        return families


def _log_skipped(skipped: set[str], catalog: Mapping[str, MetricSpec]) -> None:
    unknown = sorted(name for name in skipped if name not in catalog)
    mislabelled = sorted(name for name in skipped if name in catalog)
    if unknown:
        log.debug("skipped samples of metrics not in the catalog: %s", unknown)
    if mislabelled:
        log.debug("skipped samples whose labels differ from the catalog's: %s", mislabelled)


def _exposable(name: str, spec: MetricSpec) -> bool:
    if name != spec.name:
        reason = f"is filed under {name!r}"
    elif spec.kind is MetricKind.COUNTER and not name.endswith(_TOTAL):
        reason = "is a counter whose name does not end in _total"
    elif spec.kind is MetricKind.GAUGE and name.endswith(_TOTAL):
        reason = "is a gauge whose name ends in _total"
    elif name in AGENT_METRIC_NAMES and name != _PROBE_UP:
        reason = "is derived from agent state by the collector itself"
    elif name == _PROBE_UP and spec.labels != ("probe",):
        reason = "must have exactly the label 'probe'"
    else:
        return True
    log.warning("catalog metric %s %s; it is not exposed", spec.name, reason)
    return False


def _family(spec: MetricSpec) -> _Family:
    if spec.kind is MetricKind.COUNTER:
        # prometheus_client appends _total to counters itself.
        return CounterMetricFamily(
            spec.name.removesuffix(_TOTAL), spec.help, labels=list(spec.labels)
        )
    return GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))


def _label_values(names: tuple[str, ...], labels: LabelSet) -> tuple[str, ...] | None:
    """The label values in catalog order, or None when the label names differ."""
    if len(labels) != len(names):
        return None
    # Fast path: canonical label sets are sorted, and so are most catalog label tuples.
    if all(pair[0] == name for pair, name in zip(labels, names, strict=True)):
        return tuple(value for _, value in labels)
    by_name = dict(labels)
    if by_name.keys() != set(names):
        return None
    return tuple(by_name[name] for name in names)


def _probe_families(
    statuses: Sequence[ProbeStatus], probe_up: Mapping[str, float], up_help: str
) -> Iterator[_Family]:
    up = GaugeMetricFamily(_PROBE_UP, up_help, labels=["probe"])
    for probe, value in probe_up.items():
        up.add_metric([probe], value)
    yield up
    duration = GaugeMetricFamily(
        "nodemedic_probe_duration_seconds",
        "How long the probe's last run took.",
        labels=["probe"],
    )
    runs = CounterMetricFamily(
        "nodemedic_probe_runs", "Probe runs since the agent started.", labels=["probe"]
    )
    failures = CounterMetricFamily(
        "nodemedic_probe_failures",
        "Probe runs that failed or timed out since the agent started.",
        labels=["probe"],
    )
    for status in statuses:
        if status.duration is not None:
            duration.add_metric([status.name], status.duration)
        runs.add_metric([status.name], status.runs)
        failures.add_metric([status.name], status.failures)
    yield duration
    yield runs
    yield failures


def _condition_families(conditions: Sequence[Condition]) -> Iterator[_Family]:
    counts: dict[str, dict[ConditionState, int]] = {}
    for condition in conditions:
        per_state = counts.get(condition.rule)
        if per_state is None:
            per_state = counts[condition.rule] = dict.fromkeys(ConditionState, 0)
        per_state[condition.state] += 1
    by_severity = dict.fromkeys(Severity, 0)
    for condition in conditions:
        if condition.state is ConditionState.FIRING:
            by_severity[condition.severity] += 1
    by_state = GaugeMetricFamily(
        "nodemedic_condition_state",
        "Conditions per rule in each state; every state is present so series never vanish.",
        labels=["rule", "state"],
    )
    firing = 0
    for rule, per_state in counts.items():
        for state, count in per_state.items():
            by_state.add_metric([rule, state.value], count)
        firing += per_state[ConditionState.FIRING]
    yield by_state
    yield GaugeMetricFamily(
        "nodemedic_conditions_firing", "Conditions currently firing, all rules.", value=firing
    )
    severities = GaugeMetricFamily(
        "nodemedic_conditions_firing_by_severity",
        "Conditions currently firing, by their rule's severity; every severity is present.",
        labels=["severity"],
    )
    for severity, count in by_severity.items():
        severities.add_metric([severity.value], count)
    yield severities


_PUBLISH_RESULTS = ("acked", "failed", "refused")
_FAILURE_KINDS = ("network", "auth", "tls", "refused")


def _mqtt_families(status: MqttStatus) -> Iterator[_Family]:
    yield GaugeMetricFamily(
        "nodemedic_mqtt_connected",
        "1 while connected to an MQTT broker, else 0.",
        value=1.0 if status.connected else 0.0,
    )
    publishes = CounterMetricFamily(
        "nodemedic_mqtt_publishes",
        "Event publishes since start by result: acked (PUBACK received), failed (will be "
        "sent again) or refused (the broker's PUBACK said no, e.g. its ACL; kept queued).",
        labels=["result"],
    )
    for result in sorted(set(_PUBLISH_RESULTS) | set(status.publishes)):
        publishes.add_metric([result], status.publishes.get(result, 0))
    yield publishes
    yield CounterMetricFamily(
        "nodemedic_mqtt_reconnects",
        "Connection attempts to the broker after the first, since start.",
        value=status.reconnects,
    )
    failures = CounterMetricFamily(
        "nodemedic_mqtt_connect_failures",
        "Failed connection attempts since start by reason: network, auth (credentials "
        "refused), tls (handshake failed) or refused (other CONNACK refusals).",
        labels=["reason"],
    )
    for kind in sorted(set(_FAILURE_KINDS) | set(status.connect_failures)):
        failures.add_metric([kind], status.connect_failures.get(kind, 0))
    yield failures
    yield GaugeMetricFamily(
        "nodemedic_mqtt_outbox_events",
        "Events in the outbox waiting for the broker's acknowledgement.",
        value=status.outbox_depth,
    )
    yield GaugeMetricFamily(
        "nodemedic_mqtt_outbox_bytes",
        "Payload bytes of the events in the outbox.",
        value=status.outbox_bytes,
    )
    yield GaugeMetricFamily(
        "nodemedic_mqtt_outbox_oldest_age_seconds",
        "How long the oldest event in the outbox has waited (0 when empty).",
        value=status.outbox_oldest_age or 0.0,
    )
    yield CounterMetricFamily(
        "nodemedic_mqtt_outbox_shed_events",
        "Events shed because the outbox was full (lowest severity first, then oldest), "
        "since the state database was created.",
        value=status.outbox_shed,
    )
