"""SensorsProbe: psutil temperatures, unlabelled and duplicate sensors, no sensors."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil
import pytest
from psutil._ntuples import shwtemp

from agent.errors import ProbeError
from agent.model import labelset
from agent.probes.sensors import SensorsProbe, TemperatureReading

from .fakes import Closing, NewProbeThreads, by_series

# As psutil reports a two-socket host: both coretemp chips merged under one name.
READINGS: dict[str, list[shwtemp]] = {
    "coretemp": [
        shwtemp(label="Package id 0", current=55.0, high=80.0, critical=100.0),
        shwtemp(label="Core 0", current=50.0, high=80.0, critical=100.0),
        shwtemp(label="Package id 0", current=61.0, high=80.0, critical=100.0),
    ],
    "acpitz": [
        shwtemp(label="", current=27.8, high=None, critical=None),
        shwtemp(label="", current=29.8, high=95.0, critical=95.0),
    ],
}


def _fixed(readings: Mapping[str, Sequence[TemperatureReading]], sys_class: Path) -> SensorsProbe:
    return SensorsProbe(temperatures=lambda: readings, sys_class=sys_class)


@pytest.fixture
def chip_listed(tmp_path: Path) -> Path:
    """A ``/sys/class`` listing one hwmon chip, so runs call the reading function."""
    (tmp_path / "hwmon" / "hwmon0").mkdir(parents=True)
    return tmp_path


@pytest.mark.asyncio
async def test_temperatures_and_critical_thresholds(closing: Closing, chip_listed: Path) -> None:
    probe = closing(_fixed(READINGS, chip_listed))

    values = by_series(await probe.sample())

    def temp(chip: str, sensor: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return ("nodemedic_temperature_celsius", labelset(chip=chip, sensor=sensor))

    def crit(chip: str, sensor: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return ("nodemedic_temperature_critical_celsius", labelset(chip=chip, sensor=sensor))

    assert values == {
        temp("coretemp", "Package id 0"): 55.0,
        crit("coretemp", "Package id 0"): 100.0,
        temp("coretemp", "Core 0"): 50.0,
        crit("coretemp", "Core 0"): 100.0,
        temp("coretemp", "Package id 0 #2"): 61.0,
        crit("coretemp", "Package id 0 #2"): 100.0,
        temp("acpitz", "temp1"): pytest.approx(27.8),
        temp("acpitz", "temp2"): pytest.approx(29.8),
        crit("acpitz", "temp2"): 95.0,
    }


@pytest.mark.asyncio
async def test_a_chip_without_temperatures_yields_no_samples(
    closing: Closing, chip_listed: Path
) -> None:
    probe = closing(_fixed({}, chip_listed))

    assert await probe.sample() == []


@pytest.mark.asyncio
async def test_psutil_failure_is_a_probe_error(closing: Closing, chip_listed: Path) -> None:
    def failing() -> Mapping[str, Sequence[TemperatureReading]]:
        raise psutil.AccessDenied(name="hwmon")

    probe = closing(SensorsProbe(temperatures=failing, sys_class=chip_listed))

    with pytest.raises(ProbeError, match=r"^probe sensors: psutil: "):
        await probe.sample()


class _Recorder:
    """Temperatures with no chip, noting the thread of each read."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    def __call__(self) -> Mapping[str, Sequence[TemperatureReading]]:
        self.threads.append(threading.current_thread().name)
        return {}


@pytest.mark.asyncio
async def test_without_sensor_devices_it_reads_nothing_and_with_one_reads_in_its_thread(
    tmp_path: Path, closing: Closing
) -> None:
    (tmp_path / "thermal" / "cooling_device0").mkdir(parents=True)  # no zone: no sensor
    reads = _Recorder()
    started = NewProbeThreads("sensors")
    probe = closing(SensorsProbe(temperatures=reads, sys_class=tmp_path))

    assert await probe.sample() == []
    assert reads.threads == [], "no device: nothing to read, no thread hand-off"
    assert probe.runs_inline
    assert not started()

    (tmp_path / "hwmon" / "hwmon0").mkdir(parents=True)  # a driver loaded
    await probe.sample()
    assert len(reads.threads) == 1
    assert reads.threads[-1].startswith("probe-sensors_"), "a chip's files can be slow"
    assert not probe.runs_inline

    (tmp_path / "hwmon" / "hwmon0").rmdir()
    (tmp_path / "thermal" / "thermal_zone0").mkdir()
    await probe.sample()
    assert len(reads.threads) == 2, "a thermal zone is read too"
    assert reads.threads[-1].startswith("probe-sensors_")

    (tmp_path / "thermal" / "thermal_zone0").rmdir()
    assert await probe.sample() == []
    assert len(reads.threads) == 2, "none listed again: nothing read"
    assert probe.runs_inline


@pytest.mark.asyncio
async def test_an_unlistable_sysfs_is_read_in_the_thread(tmp_path: Path, closing: Closing) -> None:
    (tmp_path / "hwmon").write_text("not a directory")
    reads = _Recorder()
    probe = closing(SensorsProbe(temperatures=reads, sys_class=tmp_path))

    assert await probe.sample() == []
    assert len(reads.threads) == 1
    assert reads.threads[-1].startswith("probe-sensors_")
