"""Prometheus text for the probes' samples, written directly: the bulk of every scrape.

prometheus_client builds a family object per metric and a sample tuple per series, then
formats every label pair again at every scrape (about 22 us a series). A series keeps its
name and labels from one reading to the next, so :class:`SampleExposition` formats its
line up to the value once and remembers it; when no probe has reported since the last
scrape, the whole text is reused. The text is byte for byte what ``generate_latest``
writes for the families :class:`agent.metrics.AgentCollector` builds from the same samples.
:class:`MetricsRegistry` puts that text and the other families together for /metrics.
"""

from __future__ import annotations

__all__ = ["MetricsRegistry", "SampleExposition", "SampleSource"]

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import (
    UNDERSCORES,
    escape_label_name,
    escape_metric_name,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from agent.model import LabelSet, Sample
from agent.probes.catalog import MetricKind, MetricSpec

PROBE_UP: Final = "nodemedic_probe_up"

_go_float: Callable[[float], str] = floatToGoString
"""How prometheus_client writes a value (``+Inf``, ``1.5e+12``); its own function, typed."""

MEMO_SIZE: Final = 100_000
"""Series whose line prefix is remembered before the memo starts over."""

_Series = tuple[str, LabelSet]
_Entry = tuple[str, str] | None
"""A series' line up to its value and its first label's value; None when not exposable."""


class SampleExposition:
    """Renders samples as Prometheus text families, in the order their metrics first appear.

    Samples of metrics missing from the catalog, or whose label names differ from the
    catalog's, are skipped (and reported to the caller); a series that appears twice keeps
    its last value; samples of ``nodemedic_probe_up`` are not rendered but returned, so
    the caller fills in probes that have no status of their own.

    Args:
        catalog: metric specs by exposed name, already filtered to the exposable ones.
    """

    def __init__(self, catalog: Mapping[str, MetricSpec]) -> None:
        self._catalog = catalog
        self._heads: dict[str, str] = {}
        self._entries: dict[_Series, _Entry] = {}
        self._last: list[Sample] = []
        self._text = ""
        self._probe_up: dict[str, float] = {}

    def render(self, samples: Iterable[Sample]) -> tuple[str, dict[str, float], set[str]]:
        """The text of every family, probe_up readings by probe, and the metrics skipped.

        Args:
            samples: the latest samples; when they are the very objects of the previous
                call (no probe reported since), the previous text is returned as is.

        Returns:
            The exposition text, a fresh dict of ``nodemedic_probe_up`` values found among
            the samples, and the names of metrics whose samples were skipped (empty when
            the text was reused).
        """
        current = list(samples)
        last = self._last
        if len(current) == len(last) and all(a is b for a, b in zip(current, last, strict=True)):
            return self._text, dict(self._probe_up), set()
        rows: dict[str, dict[str, float]] = {}
        probe_up: dict[str, float] = {}
        skipped: set[str] = set()
        entries = self._entries
        for sample in current:
            series = (sample.metric, sample.labels)
            entry = entries[series] if series in entries else self._entry(series)
            if entry is None:
                skipped.add(sample.metric)
                continue
            prefix, first = entry
            if sample.metric == PROBE_UP:
                probe_up.setdefault(first, sample.value)
                continue
            family = rows.get(sample.metric)
            if family is None:
                family = rows[sample.metric] = {}
            family[prefix] = sample.value
        parts: list[str] = []
        for metric, family in rows.items():
            parts.append(self._head(metric))
            parts.extend(f"{prefix}{_go_float(value)}\n" for prefix, value in family.items())
        self._last, self._text, self._probe_up = current, "".join(parts), probe_up
        return self._text, dict(probe_up), skipped

    def _entry(self, series: _Series) -> _Entry:
        if len(self._entries) >= MEMO_SIZE:
            self._entries.clear()
        metric, labels = series
        spec = self._catalog.get(metric)
        entry: _Entry = None
        if spec is not None and sorted(spec.labels) == [name for name, _ in sorted(labels)]:
            name = escape_metric_name(metric, UNDERSCORES)
            pairs = ",".join(
                f'{escape_label_name(key, UNDERSCORES)}="{_escape_value(value)}"'
                for key, value in sorted(labels)
            )
            by_name = dict(labels)
            first = by_name[spec.labels[0]] if spec.labels else ""
            entry = (f"{name}{{{pairs}}} " if pairs else f"{name} ", first)
        self._entries[series] = entry
        return entry

    def _head(self, metric: str) -> str:
        head = self._heads.get(metric)
        if head is None:
            spec = self._catalog[metric]
            name = escape_metric_name(spec.name, UNDERSCORES)
            kind = "counter" if spec.kind is MetricKind.COUNTER else "gauge"
            text = spec.help.replace("\\", r"\\").replace("\n", r"\n")
            head = self._heads[metric] = f"# HELP {name} {text}\n# TYPE {name} {kind}\n"
        return head


def _escape_value(value: str) -> str:
    # As prometheus_client escapes label values (UTF-8 allowed).
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class SampleSource(Protocol):
    """A collector that can render its samples' families as text and the rest as families."""

    def collect(self) -> Iterable[Metric]:
        """Every family, as prometheus_client reads a collector."""
        ...

    def render_samples(self) -> tuple[str, dict[str, float]]:
        """The sample families' text, and probe_up readings found among the samples."""
        ...

    def state_families(self, sampled_up: Mapping[str, float]) -> Iterator[Metric]:
        """The families after the samples' (given the probe_up readings of the samples)."""
        ...


class MetricsRegistry(CollectorRegistry):
    """A registry whose :meth:`render` writes the samples' text itself.

    ``generate_latest(registry)`` still works and gives the same bytes; :meth:`render`
    is the fast path /metrics uses: the probes' samples, most of every scrape, come from
    :class:`~agent.metrics_text.SampleExposition` (line prefixes remembered per series,
    the whole text reused while no probe reported), the few families of agent state and
    the other collectors through prometheus_client.

    Args:
        agent: the agent's collector (:class:`agent.metrics.AgentCollector`), registered
            first.
    """

    def __init__(self, agent: SampleSource) -> None:
        super().__init__(auto_describe=False)
        self._agent = agent
        self._others: list[Collector] = []
        self.register(agent)

    def register(self, collector: Collector) -> None:
        """Add a collector; it is rendered after the agent's, in registration order."""
        super().register(collector)
        if collector is not self._agent:
            self._others.append(collector)

    def unregister(self, collector: Collector) -> None:
        """Remove a collector."""
        super().unregister(collector)
        if collector in self._others:
            self._others.remove(collector)

    def render(self) -> bytes:
        """The text exposition of every collector, as ``generate_latest`` would write it."""
        text, sampled_up = self._agent.render_samples()
        rest = _Families(self._agent.state_families(sampled_up), self._others)
        return text.encode() + generate_latest(rest)


class _Families:
    """Adapts a stream of families plus collectors to what ``generate_latest`` reads."""

    def __init__(self, first: Iterable[Metric], collectors: Sequence[Collector]) -> None:
        self._first = first
        self._collectors = collectors

    def collect(self) -> Iterator[Metric]:
        yield from self._first
        for collector in self._collectors:
            yield from collector.collect()
