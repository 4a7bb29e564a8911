"""SensorsProbe: psutil temperatures, unlabelled and duplicate sensors, no sensors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import psutil
import pytest
from psutil._ntuples import shwtemp

from agent.errors import ProbeError
from agent.model import labelset
from agent.probes.sensors import SensorsProbe, TemperatureReading

from .fakes import Closing, by_series

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


def _fixed(
    readings: Mapping[str, Sequence[TemperatureReading]],
) -> SensorsProbe:
    return SensorsProbe(temperatures=lambda: readings)


@pytest.mark.asyncio
async def test_temperatures_and_critical_thresholds(closing: Closing) -> None:
    probe = closing(_fixed(READINGS))

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
async def test_host_without_sensors_yields_no_samples(closing: Closing) -> None:
    probe = closing(_fixed({}))

    assert await probe.sample() == []


@pytest.mark.asyncio
async def test_psutil_failure_is_a_probe_error(closing: Closing) -> None:
    def failing() -> Mapping[str, Sequence[TemperatureReading]]:
        raise psutil.AccessDenied(name="hwmon")

    probe = closing(SensorsProbe(temperatures=failing))

    with pytest.raises(ProbeError, match=r"^probe sensors: psutil: "):
        await probe.sample()
