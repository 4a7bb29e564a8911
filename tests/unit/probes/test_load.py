"""LoadProbe: /proc/loadavg, per core by the cpuN lines of /proc/stat."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.errors import ProbeError
from agent.probes.load import LoadProbe

from .fakes import Closing, by_metric, write_tree

STAT_4_CPUS = "cpu  1 0 1 8\n" + "".join(f"cpu{n} 1 0 1 8\n" for n in range(4)) + "intr 0\n"


@pytest.mark.asyncio
async def test_load_averages_and_per_core(tmp_path: Path, closing: Closing) -> None:
    write_tree(tmp_path, {"loadavg": "1.50 3.00 2.25 2/345 6789\n", "stat": STAT_4_CPUS})
    probe = closing(LoadProbe(proc=tmp_path))

    values = by_metric(await probe.sample())

    assert values == {
        "nodemedic_load1": 1.5,
        "nodemedic_load5": 3.0,
        "nodemedic_load15": 2.25,
        "nodemedic_load5_per_core": 0.75,
    }


@pytest.mark.asyncio
async def test_per_core_falls_back_to_os_cpu_count(
    tmp_path: Path, closing: Closing, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(tmp_path, {"loadavg": "1.50 3.00 2.25 2/345 6789\n"})
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    probe = closing(LoadProbe(proc=tmp_path))

    values = by_metric(await probe.sample())

    assert values["nodemedic_load5_per_core"] == 0.5


@pytest.mark.asyncio
async def test_malformed_loadavg_is_a_probe_error(tmp_path: Path, closing: Closing) -> None:
    write_tree(tmp_path, {"loadavg": "1.50\n", "stat": STAT_4_CPUS})
    probe = closing(LoadProbe(proc=tmp_path))

    with pytest.raises(ProbeError, match=rf"^probe load: cannot parse {tmp_path}/loadavg"):
        await probe.sample()
