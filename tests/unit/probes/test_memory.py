"""MemoryProbe: /proc/meminfo and /proc/vmstat, swap I/O rate over the interval."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ProbeError
from agent.probes.memory import MemoryProbe

from .fakes import Closing, ManualClock, by_metric, write_tree

MEMINFO = """\
MemTotal:       16000000 kB
MemFree:         1000000 kB
MemAvailable:    4000000 kB
Buffers:          100000 kB
Cached:          2000000 kB
SwapCached:        10000 kB
SwapTotal:       2000000 kB
SwapFree:        1500000 kB
HugePages_Total:       0
"""
VMSTAT = "nr_free_pages 250000\npswpin 100\npswpout 300\npgfault 123456\n"


@pytest.mark.asyncio
async def test_memory_and_swap_from_known_fixture(tmp_path: Path, closing: Closing) -> None:
    write_tree(tmp_path, {"meminfo": MEMINFO, "vmstat": VMSTAT})
    probe = closing(MemoryProbe(proc=tmp_path, page_size=4096))

    values = by_metric(await probe.sample())

    assert values == {
        "nodemedic_memory_total_bytes": 16_384_000_000,
        "nodemedic_memory_available_bytes": 4_096_000_000,
        "nodemedic_memory_used_ratio": pytest.approx(0.75),
        "nodemedic_swap_total_bytes": 2_048_000_000,
        "nodemedic_swap_used_ratio": pytest.approx(0.25),
        "nodemedic_swap_in_bytes_total": 409_600,
        "nodemedic_swap_out_bytes_total": 1_228_800,
        "nodemedic_swap_io_bytes_per_second": 0.0,
    }


@pytest.mark.asyncio
async def test_swap_io_rate_over_the_interval(tmp_path: Path, closing: Closing) -> None:
    clock = ManualClock()
    write_tree(tmp_path, {"meminfo": MEMINFO, "vmstat": VMSTAT})
    probe = closing(MemoryProbe(proc=tmp_path, page_size=4096, clock=clock))
    await probe.sample()
    clock.advance(10)
    write_tree(tmp_path, {"vmstat": "pswpin 150\npswpout 350\n"})

    values = by_metric(await probe.sample())

    # 100 pages of 4 KiB in 10 s
    assert values["nodemedic_swap_io_bytes_per_second"] == pytest.approx(40_960)
    assert values["nodemedic_swap_in_bytes_total"] == 614_400
    assert values["nodemedic_swap_out_bytes_total"] == 1_433_600


@pytest.mark.asyncio
async def test_no_swap_means_swap_used_ratio_zero(tmp_path: Path, closing: Closing) -> None:
    meminfo = MEMINFO.replace("2000000 kB", "0 kB").replace("1500000 kB", "0 kB")
    write_tree(tmp_path, {"meminfo": meminfo, "vmstat": VMSTAT})
    probe = closing(MemoryProbe(proc=tmp_path, page_size=4096))

    values = by_metric(await probe.sample())

    assert values["nodemedic_swap_total_bytes"] == 0
    assert values["nodemedic_swap_used_ratio"] == 0.0


@pytest.mark.asyncio
async def test_kernel_without_memavailable_is_a_probe_error(
    tmp_path: Path, closing: Closing
) -> None:
    meminfo = "\n".join(line for line in MEMINFO.splitlines() if "MemAvailable" not in line)
    write_tree(tmp_path, {"meminfo": meminfo, "vmstat": VMSTAT})
    probe = closing(MemoryProbe(proc=tmp_path, page_size=4096))

    with pytest.raises(
        ProbeError, match=rf"^probe memory: cannot parse {tmp_path}/meminfo: missing MemAvailable$"
    ):
        await probe.sample()


@pytest.mark.asyncio
async def test_malformed_counter_line_is_a_probe_error_naming_it(
    tmp_path: Path, closing: Closing
) -> None:
    # pswpinx is another counter: only the exact name counts, and its value is not ours.
    vmstat = "pswpinx 7\n" + VMSTAT.replace("pswpout ", "pswpout lots ")
    write_tree(tmp_path, {"meminfo": MEMINFO, "vmstat": vmstat})
    probe = closing(MemoryProbe(proc=tmp_path, page_size=4096))

    with pytest.raises(
        ProbeError, match=rf"^probe memory: cannot parse {tmp_path}/vmstat: bad line 'pswpout lots "
    ):
        await probe.sample()
