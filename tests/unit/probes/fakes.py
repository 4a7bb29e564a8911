"""Fakes and fixture-tree builders shared by the probe tests."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from agent.model import LabelSet, Sample
from agent.probes.base import AnyProbe
from agent.probes.catalog import CATALOG, metrics_of

P = TypeVar("P", bound=AnyProbe)


class Closing(Protocol):
    """The ``closing`` fixture: registers a probe to be closed at teardown, returns it."""

    def __call__(self, probe: P, /) -> P: ...


class ManualClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds


class NewProbeThreads:
    """The live worker threads of probes called ``name`` started since this was made.

    A closed probe's worker ends shortly after ``close`` (its executor shuts down without
    waiting), so an earlier test's ``probe-<name>_0`` may still be alive when the next
    test starts: counting every thread of that name would make a test depend on the one
    run before it.
    """

    def __init__(self, name: str) -> None:
        self._prefix = f"probe-{name}_"
        self._before = frozenset(threading.enumerate())

    def __call__(self) -> list[threading.Thread]:
        return [
            thread
            for thread in threading.enumerate()
            if thread.name.startswith(self._prefix) and thread not in self._before
        ]


def write_tree(root: Path, files: Mapping[str, str]) -> Path:
    """Write ``{"stat": "...", "pressure/cpu": "..."}`` under ``root``; returns ``root``."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    return root


def statvfs_result(
    *,
    blocks: int,
    bfree: int,
    bavail: int,
    files: int = 0,
    ffree: int = 0,
    flag: int = 0,
    frsize: int = 4096,
) -> os.statvfs_result:
    """A real ``os.statvfs_result`` with the fields the filesystem probe reads."""
    return os.statvfs_result(
        (frsize, frsize, blocks, bfree, bavail, files, ffree, ffree, flag, 255)
    )


def by_series(samples: Sequence[Sample]) -> dict[tuple[str, LabelSet], float]:
    """Samples keyed by (metric, labels); fails on a duplicate series."""
    series = {(sample.metric, sample.labels): sample.value for sample in samples}
    assert len(series) == len(samples), "a probe emitted the same series twice"
    return series


def by_metric(samples: Sequence[Sample]) -> dict[str, float]:
    """Samples of an unlabelled probe keyed by metric name."""
    values = {sample.metric: sample.value for sample in samples}
    assert len(values) == len(samples), "a probe emitted the same metric twice"
    return values


def assert_catalog_conformant(probe: str, samples: Sequence[Sample]) -> None:
    """Every sample is one of ``probe``'s catalog metrics, with exactly its labels."""
    own = {spec.name: spec for spec in metrics_of(probe)}
    for sample in samples:
        spec = own.get(sample.metric)
        owner = CATALOG[sample.metric].probe if sample.metric in CATALOG else "nobody"
        assert spec is not None, f"{probe} emitted {sample.metric}, which belongs to {owner}"
        assert tuple(name for name, _ in sample.labels) == tuple(sorted(spec.labels)), sample
        assert all(value for _, value in sample.labels), f"empty label value in {sample}"
        assert math.isfinite(sample.value), sample
        if spec.unit == "ratio":
            assert 0.0 <= sample.value <= 1.0, sample
        if spec.unit in ("bytes", "bool", "cores") or spec.kind == "counter":
            assert sample.value >= 0, sample
    by_series(samples)
