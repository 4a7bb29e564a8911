"""DiskioProbe: /proc/diskstats deltas, default exclusions, counter wrap and reset."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import DiskioProbeConfig
from agent.errors import ProbeError
from agent.model import LabelSet, labelset
from agent.probes.diskio import DiskioProbe

from .fakes import Closing, ManualClock, by_series, write_tree

DEFAULT_EXCLUDES = DiskioProbeConfig().exclude_devices


def _line(
    name: str,
    *,
    reads: int = 0,
    read_sectors: int = 0,
    read_ms: int = 0,
    writes: int = 0,
    write_sectors: int = 0,
    write_ms: int = 0,
    io_ms: int = 0,
) -> str:
    """A diskstats line; merges, in-flight, weighted, discard and flush counters are 0."""
    return (
        f"   8       0 {name} {reads} 0 {read_sectors} {read_ms} {writes} 0 {write_sectors} "
        f"{write_ms} 0 {io_ms} 0 0 0 0 0 0 0\n"
    )


SDA_BOOT = _line(
    "sda",
    reads=1000,
    read_sectors=20000,
    read_ms=5000,
    writes=2000,
    write_sectors=40000,
    write_ms=8000,
    io_ms=30000,
)
BOOT = (
    SDA_BOOT
    + _line("sda1", reads=900, read_sectors=18000, read_ms=4500, io_ms=25000)
    + _line("loop0", reads=5, read_sectors=40, read_ms=1, io_ms=4)
    + _line("nvme0n1", writes=10, write_sectors=80, write_ms=50, io_ms=20)
    + _line("nvme0n1p1", writes=10, write_sectors=80, write_ms=50, io_ms=20)
)


def _device(values: dict[tuple[str, LabelSet], float], device: str) -> dict[str, float]:
    labels = labelset(device=device)
    return {metric: value for (metric, series), value in values.items() if series == labels}


@pytest.mark.asyncio
async def test_first_run_uses_since_boot_counters_and_skips_partitions(
    tmp_path: Path, closing: Closing
) -> None:
    write_tree(tmp_path, {"diskstats": BOOT, "uptime": "100.00 180.00\n"})
    probe = closing(DiskioProbe(proc=tmp_path, exclude_devices=DEFAULT_EXCLUDES))

    values = by_series(await probe.sample())

    assert {dict(labels)["device"] for _, labels in values} == {"sda", "nvme0n1"}
    assert _device(values, "sda") == {
        "nodemedic_disk_io_utilisation_ratio": pytest.approx(0.3),  # 30 s busy in 100 s
        "nodemedic_disk_read_await_seconds": pytest.approx(0.005),
        "nodemedic_disk_write_await_seconds": pytest.approx(0.004),
        "nodemedic_disk_read_bytes_total": 10_240_000,
        "nodemedic_disk_written_bytes_total": 20_480_000,
    }
    assert _device(values, "nvme0n1")["nodemedic_disk_read_await_seconds"] == 0.0


@pytest.mark.asyncio
async def test_second_run_covers_the_interval(tmp_path: Path, closing: Closing) -> None:
    clock = ManualClock()
    write_tree(tmp_path, {"diskstats": BOOT, "uptime": "100.00 180.00\n"})
    probe = closing(DiskioProbe(proc=tmp_path, exclude_devices=DEFAULT_EXCLUDES, clock=clock))
    await probe.sample()
    clock.advance(10)
    # sda: 100 reads taking 300 ms, no writes, 12 s busy in a 10 s window (the
    # counters and the clock are not read at the same instant)
    later = BOOT.replace(
        SDA_BOOT,
        _line(
            "sda",
            reads=1100,
            read_sectors=20800,
            read_ms=5300,
            writes=2000,
            write_sectors=40000,
            write_ms=8000,
            io_ms=42000,
        ),
    )
    write_tree(tmp_path, {"diskstats": later})

    values = _device(by_series(await probe.sample()), "sda")

    assert values == {
        "nodemedic_disk_io_utilisation_ratio": 1.0,
        "nodemedic_disk_read_await_seconds": pytest.approx(0.003),
        "nodemedic_disk_write_await_seconds": 0.0,
        "nodemedic_disk_read_bytes_total": 10_649_600,
        "nodemedic_disk_written_bytes_total": 20_480_000,
    }


@pytest.mark.asyncio
async def test_millisecond_counters_wrapping_at_32_bits(tmp_path: Path, closing: Closing) -> None:
    clock = ManualClock()
    near_wrap = 2**32 - 100
    write_tree(
        tmp_path,
        {
            "diskstats": _line("sdb", reads=5000, read_ms=near_wrap, io_ms=near_wrap),
            "uptime": "1e6 0\n",
        },
    )
    probe = closing(DiskioProbe(proc=tmp_path, clock=clock))
    await probe.sample()
    clock.advance(10)
    write_tree(tmp_path, {"diskstats": _line("sdb", reads=5100, read_ms=400, io_ms=4900)})

    values = _device(by_series(await probe.sample()), "sdb")

    assert values["nodemedic_disk_read_await_seconds"] == pytest.approx(0.005)  # 500 ms / 100
    assert values["nodemedic_disk_io_utilisation_ratio"] == pytest.approx(0.5)  # 5 s of 10


@pytest.mark.asyncio
async def test_device_readded_with_fresh_counters_reports_since_boot(
    tmp_path: Path, closing: Closing
) -> None:
    clock = ManualClock()
    write_tree(tmp_path, {"diskstats": BOOT, "uptime": "100.00 180.00\n"})
    probe = closing(DiskioProbe(proc=tmp_path, exclude_devices=DEFAULT_EXCLUDES, clock=clock))
    await probe.sample()
    clock.advance(10)
    write_tree(
        tmp_path,
        {
            "diskstats": _line("sda", reads=10, read_sectors=80, read_ms=20, io_ms=50),
            "uptime": "110.00 0\n",
        },
    )

    values = _device(by_series(await probe.sample()), "sda")

    assert values["nodemedic_disk_read_await_seconds"] == pytest.approx(0.002)
    assert values["nodemedic_disk_io_utilisation_ratio"] == pytest.approx(50 / 110_000)


@pytest.mark.asyncio
async def test_malformed_diskstats_is_a_probe_error(tmp_path: Path, closing: Closing) -> None:
    write_tree(tmp_path, {"diskstats": _line("sda", reads=1).replace(" 1 ", " x ", 1)})
    probe = closing(DiskioProbe(proc=tmp_path))

    with pytest.raises(ProbeError, match=r"^probe diskio: cannot parse .*/diskstats: "):
        await probe.sample()
