"""Fixtures for the probe tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.probes.base import AnyProbe

from .fakes import Closing, P


@pytest.fixture
def closing() -> Iterator[Closing]:
    """Close every probe the test registers when it ends, so no worker thread outlives it."""
    probes: list[AnyProbe] = []

    def register(probe: P, /) -> P:
        probes.append(probe)
        return probe

    yield register
    for probe in probes:
        probe.close()
