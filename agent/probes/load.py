"""Load averages from ``/proc/loadavg``, and load per core."""

from __future__ import annotations

__all__ = ["LoadProbe"]

import logging
import os

from agent.model import Sample
from agent.probes.base import ProcfsProbe, parse_error, read_text
from agent.probes.cpu import read_cpu_stat

log = logging.getLogger(__name__)


class LoadProbe(ProcfsProbe):
    """Emits the 1, 5 and 15 minute load averages and the 5 minute load per online CPU.

    Online CPUs are counted in ``/proc/stat``; if that cannot be read the probe falls
    back to ``os.cpu_count()``.
    """

    NAME = "load"

    def collect(self) -> list[Sample]:
        """Read the load averages and divide the 5 minute one by the online CPUs."""
        text = read_text(self.proc / "loadavg")
        try:
            load1, load5, load15 = (float(field) for field in text.split()[:3])
        except ValueError:
            raise parse_error(
                self.proc / "loadavg", f"expected three load averages, got {text!r}"
            ) from None
        cpus = self._online_cpus()
        return [
            Sample.of("nodemedic_load1", load1),
            Sample.of("nodemedic_load5", load5),
            Sample.of("nodemedic_load15", load15),
            Sample.of("nodemedic_load5_per_core", load5 / cpus),
        ]

    def _online_cpus(self) -> int:
        try:
            cpus = read_cpu_stat(self.proc / "stat").cpus
        except (OSError, ValueError) as err:
            log.debug("probe load: counting CPUs with os.cpu_count(): %s", err)
            cpus = 0
        return cpus or os.cpu_count() or 1
