"""The status page's short memory: the last hour of a few key series, in bounded rings.

Each series keeps at most ``capacity`` points (360 by default: an hour at one point every
10 s), so the memory it takes is fixed however long the agent runs. The readings come
from the probes' latest samples (see :func:`readings`) and are taken by
:func:`sample_history` on a timer of its own, never by a page view.
"""

from __future__ import annotations

__all__ = [
    "HISTORY_INTERVAL",
    "HISTORY_POINTS",
    "SERIES",
    "MetricHistory",
    "Point",
    "SeriesSpec",
    "readings",
    "sample_history",
]

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from agent.model import Sample
from agent.view import AgentView

log = logging.getLogger(__name__)

HISTORY_INTERVAL: Final = 10.0
"""Seconds between two points of every series."""
HISTORY_POINTS: Final = 360
"""Points kept per series: an hour at :data:`HISTORY_INTERVAL`."""

Point = tuple[float, float]
"""(epoch seconds, value)."""

_OUTBOX_DEPTH = "outbox"


@dataclass(frozen=True, slots=True)
class SeriesSpec:
    """One charted series.

    Attributes:
        key: short identifier, used in the page and the stream.
        title: what the chart is headed with.
        unit: shown after values (``%`` or empty).
        metric: the sample metric it reads (the highest value over its label sets), or
            empty for a figure that is not a sample (the outbox depth).
        scale: factor from the metric's unit to the shown one (100 for ratios as %).
    """

    key: str
    title: str
    unit: str
    metric: str
    scale: float = 1.0


SERIES: Final[tuple[SeriesSpec, ...]] = (
    SeriesSpec("cpu", "CPU used", "%", "nodemedic_cpu_utilisation_ratio", 100.0),
    SeriesSpec("memory", "Memory used", "%", "nodemedic_memory_used_ratio", 100.0),
    SeriesSpec("load", "Load (1 min)", "", "nodemedic_load1"),
    SeriesSpec("filesystem", "Fullest filesystem", "%", "nodemedic_filesystem_used_ratio", 100.0),
    SeriesSpec(_OUTBOX_DEPTH, "MQTT outbox depth", "", ""),
)


class MetricHistory:
    """A bounded ring of points per series.

    Args:
        series: the series to keep.
        capacity: points kept per series; the oldest go first.
    """

    def __init__(
        self, series: Sequence[SeriesSpec] = SERIES, *, capacity: int = HISTORY_POINTS
    ) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be at least 2 points, got {capacity}")
        keys = [spec.key for spec in series]
        if len(set(keys)) != len(keys):
            raise ValueError(f"series keys must be unique, got {keys}")
        self._series = tuple(series)
        self._capacity = capacity
        self._points: dict[str, deque[Point]] = {key: deque(maxlen=capacity) for key in keys}

    @property
    def series(self) -> tuple[SeriesSpec, ...]:
        """The series kept, in chart order."""
        return self._series

    @property
    def capacity(self) -> int:
        """Points kept per series."""
        return self._capacity

    def record(self, at: float, values: Mapping[str, float]) -> None:
        """Add one point per series present in ``values``; other keys are ignored.

        A series missing from ``values`` (its probe is off or failing) gets no point, so
        its chart shows a gap in time rather than a made-up value.
        """
        for key, value in values.items():
            points = self._points.get(key)
            if points is not None:
                points.append((at, value))

    def points(self, key: str) -> list[Point]:
        """The points of series ``key``, oldest first.

        Raises:
            KeyError: if no series is called ``key``.
        """
        return list(self._points[key])

    def to_json(self) -> dict[str, list[list[float]]]:
        """Every series' points as ``{key: [[time, value], ...]}``."""
        return {key: [[t, v] for t, v in points] for key, points in self._points.items()}


def readings(
    samples: Iterable[Sample],
    *,
    outbox_depth: int | None,
    series: Sequence[SeriesSpec] = SERIES,
) -> dict[str, float]:
    """The current value of each series from the latest samples.

    Args:
        samples: the probes' latest samples.
        outbox_depth: events waiting in the MQTT outbox, None when MQTT is off.
        series: the series to read.

    Returns:
        ``{key: value}`` for each series that has a reading now.
    """
    by_metric: dict[str, float] = {}
    for sample in samples:
        best = by_metric.get(sample.metric)
        if best is None or sample.value > best:
            by_metric[sample.metric] = sample.value
    values: dict[str, float] = {}
    for spec in series:
        if spec.key == _OUTBOX_DEPTH:
            if outbox_depth is not None:
                values[spec.key] = float(outbox_depth)
        elif spec.metric in by_metric:
            values[spec.key] = by_metric[spec.metric] * spec.scale
    return values


async def sample_history(
    history: MetricHistory,
    view: AgentView,
    *,
    interval: float = HISTORY_INTERVAL,
    clock: Callable[[], float] = time.time,
    recorded: Callable[[float, Mapping[str, float]], None] | None = None,
) -> None:
    """Record a point of every series every ``interval`` seconds, forever.

    Args:
        history: where the points go.
        view: the agent state the readings come from.
        interval: seconds between points.
        clock: epoch seconds now.
        recorded: called with each point's time and values (the live stream).
    """
    failing = False
    while True:
        try:
            mqtt = view.mqtt_status()
            depth = mqtt.outbox_depth if mqtt is not None else None
            values = readings(view.latest_samples(), outbox_depth=depth)
            now = clock()
            history.record(now, values)
            if recorded is not None:
                recorded(now, values)
        # A task-loop wrapper: a bug here must cost a gap in the charts, not the API.
        except Exception:
            if not failing:
                log.exception("cannot record the status page's history")
            failing = True
        else:
            if failing:
                log.info("the status page's history is recorded again")
            failing = False
        await asyncio.sleep(interval)
