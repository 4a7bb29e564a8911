"""Block device utilisation, latency and throughput counters from ``/proc/diskstats``.

Utilisation and awaits cover the time since the previous run. The first run, and the
first run after a device's counters went backwards (it was removed and re-added),
uses the counters since boot, with ``/proc/uptime`` as the elapsed time.
"""

from __future__ import annotations

__all__ = ["DiskioProbe"]

import re
import time
from dataclasses import dataclass
from pathlib import Path

from agent.model import Sample
from agent.probes.base import BlockingProbe, Clock, parse_error, read_text

SECTOR_BYTES = 512
"""diskstats counts 512-byte sectors whatever the device's own sector size."""

# major minor name, then at least the 11 counters every kernel since 2.6.25 has.
_MIN_FIELDS = 14
# The kernel prints the millisecond fields as 32-bit unsigned ints: they wrap after
# 49.7 days of busy (or summed request) time, which busy servers do reach.
_MS_WRAP = 2**32


@dataclass(frozen=True, slots=True)
class _DiskCounters:
    reads: int
    read_sectors: int
    read_ms: int
    writes: int
    write_sectors: int
    write_ms: int
    io_ms: int

    def minus(self, other: _DiskCounters) -> _DiskCounters | None:
        """The change since ``other``, or None when the device was reset (re-added)."""
        delta = _DiskCounters(
            reads=self.reads - other.reads,
            read_sectors=self.read_sectors - other.read_sectors,
            read_ms=(self.read_ms - other.read_ms) % _MS_WRAP,
            writes=self.writes - other.writes,
            write_sectors=self.write_sectors - other.write_sectors,
            write_ms=(self.write_ms - other.write_ms) % _MS_WRAP,
            io_ms=(self.io_ms - other.io_ms) % _MS_WRAP,
        )
        if min(delta.reads, delta.read_sectors, delta.writes, delta.write_sectors) < 0:
            return None
        return delta


class DiskioProbe(BlockingProbe):
    """Emits per-device utilisation, read and write awaits, and bytes read and written.

    Args:
        interval: seconds between runs.
        timeout: seconds one run may take.
        proc: where procfs is mounted.
        exclude_devices: regular expression (``re.search``) for device names to leave out.
        clock: monotonic seconds.

    Raises:
        re.error: when ``exclude_devices`` is not a valid regular expression.
    """

    def __init__(
        self,
        *,
        interval: float = 10.0,
        timeout: float = 10.0,
        proc: Path = Path("/proc"),
        exclude_devices: str | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(name="diskio", interval=interval, timeout=timeout, clock=clock)
        self._diskstats = proc / "diskstats"
        self._uptime = proc / "uptime"
        self._exclude = re.compile(exclude_devices) if exclude_devices else None
        self._previous: dict[str, _DiskCounters] = {}
        self._previous_time = 0.0

    def collect(self) -> list[Sample]:
        """Read diskstats and compute each device's figures since the previous run."""
        text = read_text(self._diskstats)
        now = self._clock()
        devices = self._parse(text)
        elapsed = now - self._previous_time
        uptime: float | None = None
        samples: list[Sample] = []
        for device, counters in devices.items():
            before = self._previous.get(device)
            delta = counters.minus(before) if before is not None else None
            if delta is not None and elapsed > 0:
                window = elapsed
            else:
                if uptime is None:
                    uptime = self._read_uptime()
                delta, window = counters, uptime
            samples.extend(_samples(device, counters, delta, window))
        self._previous = devices
        self._previous_time = now
        return samples

    def _parse(self, text: str) -> dict[str, _DiskCounters]:
        devices: dict[str, _DiskCounters] = {}
        for line in text.splitlines():
            fields = line.split()
            # Shorter lines are partitions on kernels before 2.6.25: not devices.
            if len(fields) < _MIN_FIELDS:
                continue
            name = fields[2]
            if self._exclude is not None and self._exclude.search(name):
                continue
            try:
                devices[name] = _DiskCounters(
                    reads=int(fields[3]),
                    read_sectors=int(fields[5]),
                    read_ms=int(fields[6]),
                    writes=int(fields[7]),
                    write_sectors=int(fields[9]),
                    write_ms=int(fields[10]),
                    io_ms=int(fields[12]),
                )
            except ValueError:
                raise parse_error(self._diskstats, f"bad line {line!r}") from None
        return devices

    def _read_uptime(self) -> float:
        text = read_text(self._uptime)
        try:
            return float(text.split()[0])
        except (IndexError, ValueError):
            raise parse_error(self._uptime, f"bad uptime {text!r}") from None


def _samples(
    device: str, total: _DiskCounters, delta: _DiskCounters, window: float
) -> list[Sample]:
    utilisation = min(1.0, delta.io_ms / (window * 1000)) if window > 0 else 0.0
    read_await = delta.read_ms / delta.reads / 1000 if delta.reads > 0 else 0.0
    write_await = delta.write_ms / delta.writes / 1000 if delta.writes > 0 else 0.0
    return [
        Sample.of("nodemedic_disk_io_utilisation_ratio", utilisation, device=device),
        Sample.of("nodemedic_disk_read_await_seconds", read_await, device=device),
        Sample.of("nodemedic_disk_write_await_seconds", write_await, device=device),
        Sample.of(
            "nodemedic_disk_read_bytes_total", total.read_sectors * SECTOR_BYTES, device=device
        ),
        Sample.of(
            "nodemedic_disk_written_bytes_total", total.write_sectors * SECTOR_BYTES, device=device
        ),
    ]
