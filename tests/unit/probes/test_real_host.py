"""Every probe against this machine's real /proc and /sys speaks the catalog's language."""

from __future__ import annotations

import pytest

from agent.config import ProbesConfig
from agent.probes import build_probes
from agent.probes.base import sample_once
from agent.probes.catalog import metrics_of

from .fakes import Closing, assert_catalog_conformant

# Sources every Linux host has; the other probes may legitimately emit nothing
# (no PSI, no sensors, every mount or device excluded in a container).
ALWAYS_COMPLETE = ("cpu", "memory", "load", "fds", "clock")


@pytest.mark.asyncio
async def test_every_probe_on_the_real_host_emits_only_catalog_series(closing: Closing) -> None:
    probes = [closing(probe) for probe in build_probes(ProbesConfig())]

    for probe in probes:
        first = await sample_once(probe)
        second = await sample_once(probe)  # the delta path of the rate probes

        for samples in (first, second):
            assert_catalog_conformant(probe.name, samples)
        if probe.name in ALWAYS_COMPLETE:
            assert {s.metric for s in second} == {spec.name for spec in metrics_of(probe.name)}
