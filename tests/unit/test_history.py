"""The status page's history ring: bounded by count, fed from the probes' latest samples."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import pytest

from agent.history import SERIES, MetricHistory, readings, sample_history
from agent.model import MqttLinkState, MqttStatus, Sample

from .fake_view import FakeAgentView


def test_each_series_keeps_at_most_capacity_points_oldest_dropped_first() -> None:
    history = MetricHistory(capacity=360)
    for i in range(1000):
        history.record(float(i), {"cpu": float(i), "memory": 1.0})

    cpu = history.points("cpu")
    assert len(cpu) == 360
    assert cpu[0] == (640.0, 640.0)
    assert cpu[-1] == (999.0, 999.0)
    assert len(history.points("memory")) == 360
    assert history.points("load") == []  # never read: no made-up values
    assert len(history.to_json()["cpu"]) == 360


def test_unknown_series_are_ignored_and_bad_shapes_refused() -> None:
    history = MetricHistory(capacity=2)
    history.record(1.0, {"nonsense": 3.0})
    assert all(not points for points in history.to_json().values())
    with pytest.raises(KeyError):
        history.points("nonsense")
    with pytest.raises(ValueError, match="capacity must be at least 2"):
        MetricHistory(capacity=1)
    with pytest.raises(ValueError, match="unique"):
        MetricHistory((SERIES[0], SERIES[0]))


def test_readings_scale_ratios_to_percent_and_take_the_fullest_filesystem() -> None:
    samples = [
        Sample.of("nodemedic_cpu_utilisation_ratio", 0.25),
        Sample.of("nodemedic_memory_used_ratio", 0.5),
        Sample.of("nodemedic_load1", 1.5),
        Sample.of("nodemedic_filesystem_used_ratio", 0.2, mountpoint="/"),
        Sample.of("nodemedic_filesystem_used_ratio", 0.9, mountpoint="/var"),
        Sample.of("nodemedic_filesystem_used_ratio", 0.4, mountpoint="/home"),
    ]

    values = readings(samples, outbox_depth=7)

    assert values == {
        "cpu": 25.0,
        "memory": 50.0,
        "load": 1.5,
        "filesystem": 90.0,
        "outbox": 7.0,
    }
    assert readings([], outbox_depth=None) == {}


@pytest.mark.asyncio
async def test_the_sampler_records_a_point_per_interval_and_reports_it() -> None:
    view = FakeAgentView(
        samples=[Sample.of("nodemedic_memory_used_ratio", 0.125)],
        mqtt=MqttStatus(MqttLinkState.CONNECTED, outbox_depth=3),
    )
    history = MetricHistory()
    seen: list[tuple[float, Mapping[str, float]]] = []
    three = asyncio.Event()
    ticks = iter(float(t) for t in range(100, 200))

    def recorded(at: float, values: Mapping[str, float]) -> None:
        seen.append((at, values))
        if len(seen) >= 3:
            three.set()

    task = asyncio.create_task(
        sample_history(
            history,
            view,
            interval=0.01,
            clock=lambda: next(ticks),
            recorded=recorded,
        )
    )
    try:
        async with asyncio.timeout(10):
            await three.wait()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert history.points("memory")[:3] == [(100.0, 12.5), (101.0, 12.5), (102.0, 12.5)]
    assert history.points("outbox")[0] == (100.0, 3.0)
    assert seen[0] == (100.0, {"memory": 12.5, "outbox": 3.0})


@pytest.mark.asyncio
async def test_a_failing_view_leaves_a_gap_and_the_sampler_keeps_going(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent.history")
    view = FakeAgentView(broken={"latest_samples"})
    history = MetricHistory()
    load_seen = asyncio.Event()

    def recorded(at: float, values: Mapping[str, float]) -> None:
        if "load" in values:
            load_seen.set()

    task = asyncio.create_task(sample_history(history, view, interval=0.01, recorded=recorded))
    try:
        await asyncio.sleep(0.05)
        view.broken.clear()
        view.samples = [Sample.of("nodemedic_load1", 0.5)]
        async with asyncio.timeout(10):
            await load_seen.wait()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    failures = [r for r in caplog.records if "cannot record" in r.getMessage()]
    assert len(failures) == 1  # logged on the transition, not every tick
    assert any("recorded again" in r.getMessage() for r in caplog.records)
