"""Memory and swap from ``/proc/meminfo`` and ``/proc/vmstat``."""

from __future__ import annotations

__all__ = ["MemoryProbe"]

import os
import time
from pathlib import Path

from agent.model import Sample
from agent.probes.base import BlockingProbe, Clock, parse_error, read_text

_MEMINFO_KEYS = ("MemTotal", "MemAvailable", "SwapTotal", "SwapFree")
_VMSTAT_KEYS = ("pswpin", "pswpout")


class MemoryProbe(BlockingProbe):
    """Emits memory totals and ratios, swap use, and swap I/O counters and rate.

    The swap I/O rate covers the time since the previous run; the first run reports 0.

    Args:
        interval: seconds between runs.
        timeout: seconds one run may take.
        proc: where procfs is mounted.
        page_size: bytes per page for the vmstat swap counters (default: the system's).
        clock: monotonic seconds.
    """

    def __init__(
        self,
        *,
        interval: float = 10.0,
        timeout: float = 10.0,
        proc: Path = Path("/proc"),
        page_size: int | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(name="memory", interval=interval, timeout=timeout, clock=clock)
        self._meminfo = proc / "meminfo"
        self._vmstat = proc / "vmstat"
        self._page_size = page_size if page_size is not None else os.sysconf("SC_PAGE_SIZE")
        self._previous: tuple[float, int] | None = None

    def collect(self) -> list[Sample]:
        """Read meminfo and vmstat; the swap rate is over the time since the previous run."""
        mem = _read_fields(self._meminfo, _MEMINFO_KEYS, scale=1024)
        pages = _read_fields(self._vmstat, _VMSTAT_KEYS, scale=self._page_size)
        now = self._clock()
        total, available = mem["MemTotal"], mem["MemAvailable"]
        if total <= 0:
            raise parse_error(self._meminfo, f"MemTotal is {total}")
        swap_total, swap_free = mem["SwapTotal"], mem["SwapFree"]
        swapped = pages["pswpin"] + pages["pswpout"]
        rate = 0.0
        if self._previous is not None:
            then, swapped_then = self._previous
            if now > then and swapped >= swapped_then:
                rate = (swapped - swapped_then) / (now - then)
        self._previous = (now, swapped)
        swap_used = (swap_total - swap_free) / swap_total if swap_total > 0 else 0.0
        return [
            Sample.of("nodemedic_memory_total_bytes", total),
            Sample.of("nodemedic_memory_available_bytes", available),
            Sample.of("nodemedic_memory_used_ratio", min(1.0, max(0.0, 1 - available / total))),
            Sample.of("nodemedic_swap_total_bytes", swap_total),
            Sample.of("nodemedic_swap_used_ratio", min(1.0, max(0.0, swap_used))),
            Sample.of("nodemedic_swap_in_bytes_total", pages["pswpin"]),
            Sample.of("nodemedic_swap_out_bytes_total", pages["pswpout"]),
            Sample.of("nodemedic_swap_io_bytes_per_second", rate),
        ]


def _read_fields(path: Path, keys: tuple[str, ...], *, scale: int) -> dict[str, int]:
    """Pick ``keys`` out of a ``name value`` (meminfo: ``name: value kB``) file, scaled."""
    wanted = set(keys)
    found: dict[str, int] = {}
    for line in read_text(path).splitlines():
        name, _, rest = line.partition(" ")
        name = name.rstrip(":")
        if name not in wanted:
            continue
        fields = rest.split()
        try:
            found[name] = int(fields[0]) * scale
        except (IndexError, ValueError):
            raise parse_error(path, f"bad line {line!r}") from None
        if len(found) == len(wanted):
            break
    missing = [key for key in keys if key not in found]
    if missing:
        # MemAvailable appeared in Linux 3.14; there is no honest substitute for it.
        raise parse_error(path, f"missing {', '.join(missing)}")
    return found
