"""CPU utilisation, iowait and steal from ``/proc/stat``.

Ratios cover the time since the previous run. The very first run has no previous
reading and reports the averages since boot instead: a real, if smoothed, value
rather than a gap.
"""

from __future__ import annotations

__all__ = ["CpuProbe", "CpuTimes", "read_cpu_stat"]

from dataclasses import dataclass
from pathlib import Path

from agent.model import Sample
from agent.probes.base import ProcfsProbe, parse_error, read_text

# user nice system idle iowait irq softirq steal; guest and guest_nice are already
# counted in user and nice, so they stay out of the total.
_COUNTED_FIELDS = 8


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """Aggregate CPU time counters (clock ticks) and the number of online CPUs.

    Attributes:
        total: user + nice + system + idle + iowait + irq + softirq + steal.
        idle: idle ticks.
        iowait: iowait ticks.
        steal: steal ticks.
        cpus: ``cpuN`` lines, i.e. online logical CPUs.
    """

    total: int
    idle: int
    iowait: int
    steal: int
    cpus: int


def read_cpu_stat(path: Path) -> CpuTimes:
    """Parse the aggregate ``cpu`` line and count the ``cpuN`` lines of ``/proc/stat``.

    Raises:
        OSError: when the file cannot be read.
        ValueError: when the aggregate line is missing or malformed.
    """
    aggregate: list[int] | None = None
    cpus = 0
    for line in read_text(path).splitlines():
        if not line.startswith("cpu"):
            # cpu lines come first; nothing after them is ours.
            if aggregate is not None:
                break
            continue
        if line.startswith("cpu "):
            try:
                aggregate = [int(field) for field in line.split()[1 : _COUNTED_FIELDS + 1]]
            except ValueError:
                raise parse_error(path, f"bad cpu line {line!r}") from None
        else:
            cpus += 1
    if aggregate is None or len(aggregate) < 4:
        raise parse_error(path, "no aggregate 'cpu' line with at least 4 counters")
    # Kernels before 2.6.11 lack steal (and before 2.5.41 iowait): count them as 0.
    aggregate.extend([0] * (_COUNTED_FIELDS - len(aggregate)))
    return CpuTimes(
        total=sum(aggregate),
        idle=aggregate[3],
        iowait=aggregate[4],
        steal=aggregate[7],
        cpus=cpus,
    )


class CpuProbe(ProcfsProbe):
    """Emits ``nodemedic_cpu_*``: utilisation, iowait and steal ratios, and the CPU count."""

    NAME = "cpu"
    _previous: CpuTimes | None = None  # the last reading, for the next delta

    def collect(self) -> list[Sample]:
        """Read ``/proc/stat`` and compute the ratios since the previous run."""
        now = read_cpu_stat(self.proc / "stat")
        base = self._previous
        self._previous = now
        total, idle, iowait, steal = now.total, now.idle, now.iowait, now.steal
        if base is not None and now.total > base.total:
            total = now.total - base.total
            # iowait is known to step backwards on NO_HZ kernels: never below zero.
            idle = max(0, now.idle - base.idle)
            iowait = max(0, now.iowait - base.iowait)
            steal = max(0, now.steal - base.steal)
        # else: first run, or no tick since the last one: fall back to since-boot.
        return [
            Sample.of("nodemedic_cpu_utilisation_ratio", _ratio(total - idle - iowait, total)),
            Sample.of("nodemedic_cpu_iowait_ratio", _ratio(iowait, total)),
            Sample.of("nodemedic_cpu_steal_ratio", _ratio(steal, total)),
            Sample.of("nodemedic_cpu_cores", now.cpus),
        ]


def _ratio(part: int, whole: int) -> float:
    if whole <= 0:
        return 0.0
    return min(1.0, max(0.0, part / whole))
