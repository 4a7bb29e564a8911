"""CpuProbe: ratios from /proc/stat deltas, since boot on the first run."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ProbeError
from agent.probes.cpu import CpuProbe

from .fakes import Closing, by_metric, write_tree

# user nice system idle iowait irq softirq steal guest guest_nice
BOOT = """\
cpu  1000 50 450 8000 300 50 50 100 20 0
cpu0 500 25 225 4000 150 25 25 50 10 0
cpu1 500 25 225 4000 150 25 25 50 10 0
intr 12345 0 0 0
ctxt 999
btime 1700000000
"""
# +200 user, +100 system, +500 idle, +100 iowait, +100 steal (1000 ticks), +50 guest
LATER = """\
cpu  1200 50 550 8500 400 50 50 200 70 0
cpu0 600 25 275 4250 200 25 25 100 35 0
cpu1 600 25 275 4250 200 25 25 100 35 0
intr 12999 0 0 0
ctxt 1999
btime 1700000000
"""


def _stat(proc: Path, text: str) -> None:
    write_tree(proc, {"stat": text})


@pytest.mark.asyncio
async def test_first_run_reports_since_boot_ratios(tmp_path: Path, closing: Closing) -> None:
    _stat(tmp_path, BOOT)
    probe = closing(CpuProbe(proc=tmp_path))

    values = by_metric(await probe.sample())

    assert values == {
        "nodemedic_cpu_utilisation_ratio": pytest.approx(0.17),
        "nodemedic_cpu_iowait_ratio": pytest.approx(0.03),
        "nodemedic_cpu_steal_ratio": pytest.approx(0.01),
        "nodemedic_cpu_cores": 2,
    }


@pytest.mark.asyncio
async def test_second_run_reports_ratios_over_the_interval(
    tmp_path: Path, closing: Closing
) -> None:
    _stat(tmp_path, BOOT)
    probe = closing(CpuProbe(proc=tmp_path))
    await probe.sample()
    _stat(tmp_path, LATER)

    values = by_metric(await probe.sample())

    # guest time is already inside user: counting it again would give 400/1050.
    assert values == {
        "nodemedic_cpu_utilisation_ratio": pytest.approx(0.4),
        "nodemedic_cpu_iowait_ratio": pytest.approx(0.1),
        "nodemedic_cpu_steal_ratio": pytest.approx(0.1),
        "nodemedic_cpu_cores": 2,
    }


@pytest.mark.asyncio
async def test_no_tick_since_last_run_falls_back_to_since_boot(
    tmp_path: Path, closing: Closing
) -> None:
    _stat(tmp_path, BOOT)
    probe = closing(CpuProbe(proc=tmp_path))
    await probe.sample()

    values = by_metric(await probe.sample())

    assert values["nodemedic_cpu_utilisation_ratio"] == pytest.approx(0.17)


@pytest.mark.asyncio
async def test_old_kernel_without_iowait_and_steal_columns(
    tmp_path: Path, closing: Closing
) -> None:
    _stat(tmp_path, "cpu  100 0 100 800\ncpu0 100 0 100 800\nintr 1\n")
    probe = closing(CpuProbe(proc=tmp_path))

    values = by_metric(await probe.sample())

    assert values == {
        "nodemedic_cpu_utilisation_ratio": pytest.approx(0.2),
        "nodemedic_cpu_iowait_ratio": 0.0,
        "nodemedic_cpu_steal_ratio": 0.0,
        "nodemedic_cpu_cores": 1,
    }


@pytest.mark.parametrize(
    "text", ["intr 1 2 3\n", "cpu  1 2 x 4 5\n", "cpu  1 2\n"], ids=["no-cpu", "garbage", "short"]
)
@pytest.mark.asyncio
async def test_malformed_stat_is_a_probe_error_naming_the_file(
    tmp_path: Path, text: str, closing: Closing
) -> None:
    _stat(tmp_path, text)
    probe = closing(CpuProbe(proc=tmp_path))

    with pytest.raises(ProbeError, match=rf"^probe cpu: cannot parse {tmp_path}/stat: "):
        await probe.sample()
