"""Hardware temperatures through ``psutil.sensors_temperatures()``."""

from __future__ import annotations

__all__ = ["SensorsProbe", "TemperatureReading"]

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import psutil

from agent.model import Sample
from agent.probes.base import BlockingProbe, Clock

SYS_CLASS = Path("/sys/class")


class TemperatureReading(Protocol):
    """The fields of psutil's ``shwtemp`` the probe uses."""

    @property
    def label(self) -> str:
        """The sensor's label, often empty."""
        ...

    @property
    def current(self) -> float:
        """Degrees Celsius."""
        ...

    @property
    def critical(self) -> float | None:
        """Critical threshold in degrees Celsius, if the chip reports one."""
        ...


Temperatures = Callable[[], Mapping[str, Sequence[TemperatureReading]]]
"""``psutil.sensors_temperatures`` or a test's stand-in."""


def _psutil_temperatures() -> Mapping[str, Sequence[TemperatureReading]]:
    return psutil.sensors_temperatures()


class SensorsProbe(BlockingProbe):
    """Emits each sensor's temperature and, where known, its critical temperature.

    ``sensor`` is the sensor's label, or ``tempN`` (its 1-based position on the chip,
    as hwmon numbers them) when the label is empty. psutil merges chips of the same
    name (two CPU packages, several NVMe drives), so a label seen again on a chip gets
    `` #2``, `` #3``... to keep every series distinct. A host without sensors (most
    virtual machines) yields no samples.

    Each run first lists sysfs's hwmon chips and thermal zones (in-memory directories:
    this cannot block). With none listed there is nothing to read: the run yields no
    samples on the event loop, without psutil's globbing or a thread hand-off. Otherwise
    psutil reads them in the probe's thread, since a chip's files can be slow (i2c).

    Args:
        interval: seconds between runs.
        timeout: seconds one run may take.
        temperatures: the reading function, ``psutil.sensors_temperatures`` by default.
        clock: monotonic seconds.
        sys_class: where sysfs lists device classes (``/sys/class``).
    """

    def __init__(
        self,
        *,
        interval: float = 30.0,
        timeout: float = 10.0,
        temperatures: Temperatures = _psutil_temperatures,
        clock: Clock = time.monotonic,
        sys_class: Path = SYS_CLASS,
    ) -> None:
        super().__init__(name="sensors", interval=interval, timeout=timeout, clock=clock)
        self._temperatures = temperatures
        self._sys_class = sys_class

    async def sample(self) -> Sequence[Sample]:
        """Read the sensors; on the event loop, reading nothing, when sysfs lists none."""
        self.read_next_on_loop(not self._devices_listed())
        return await super().sample()

    def _devices_listed(self) -> bool:
        """Whether sysfs lists a hwmon chip or a thermal zone (or cannot be listed)."""
        chips = _entries(self._sys_class / "hwmon")
        zones = _entries(self._sys_class / "thermal")
        if chips is None or zones is None:
            return True  # not known to be empty: the thread
        return bool(chips) or any(name.startswith("thermal_zone") for name in zones)

    def collect(self) -> list[Sample]:
        """Read every temperature sensor once."""
        if self.runs_inline:
            return []  # sample() found no device listed
        chips = self._temperatures()
        samples: list[Sample] = []
        for chip, readings in chips.items():
            seen: dict[str, int] = {}
            for index, reading in enumerate(readings, start=1):
                sensor = reading.label or f"temp{index}"
                seen[sensor] = seen.get(sensor, 0) + 1
                if seen[sensor] > 1:
                    sensor = f"{sensor} #{seen[sensor]}"
                if not math.isfinite(reading.current):
                    continue
                samples.append(
                    Sample.of(
                        "nodemedic_temperature_celsius", reading.current, chip=chip, sensor=sensor
                    )
                )
                critical = reading.critical
                if critical is not None and math.isfinite(critical):
                    samples.append(
                        Sample.of(
                            "nodemedic_temperature_critical_celsius",
                            critical,
                            chip=chip,
                            sensor=sensor,
                        )
                    )
        return samples


def _entries(directory: Path) -> list[str] | None:
    """The names in ``directory``; none when it does not exist, None when unreadable."""
    try:
        return [path.name for path in directory.iterdir()]
    except FileNotFoundError:
        return []
    except OSError:
        return None
