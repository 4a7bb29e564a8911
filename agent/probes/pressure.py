"""Pressure stall information (PSI) from ``/proc/pressure/{cpu,memory,io}``."""

from __future__ import annotations

__all__ = ["PressureProbe"]

import errno
import logging
from pathlib import Path

from agent.model import Sample
from agent.probes.base import ProcfsProbe, parse_error, read_text

log = logging.getLogger(__name__)

RESOURCES = ("cpu", "memory", "io")
_WINDOWS = ("avg10", "avg60")


class PressureProbe(ProcfsProbe):
    """Emits the ``some`` and ``full`` 10 s and 60 s stall ratios per resource.

    A kernel without PSI (no ``/proc/pressure``, or PSI disabled at boot) yields no
    samples rather than an error, and so does a missing line: older kernels have no
    ``full`` line for cpu.
    """

    NAME = "pressure"

    def collect(self) -> list[Sample]:
        """Read each resource's PSI file; percentages become ratios."""
        samples: list[Sample] = []
        for resource in RESOURCES:
            path = self.proc / "pressure" / resource
            try:
                text = read_text(path)
            except OSError as err:
                # Absent (PSI not built in) or EOPNOTSUPP (psi=0 on the command line).
                if isinstance(err, FileNotFoundError) or err.errno == errno.EOPNOTSUPP:
                    log.debug("probe pressure: no PSI for %s: %s", resource, err)
                    continue
                raise
            samples.extend(_parse(path, resource, text))
        return samples


def _parse(path: Path, resource: str, text: str) -> list[Sample]:
    samples: list[Sample] = []
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind not in ("some", "full"):
            continue
        values = {key: value for key, _, value in (pair.partition("=") for pair in rest.split())}
        for window in _WINDOWS:
            try:
                percent = float(values[window])
            except (KeyError, ValueError):
                raise parse_error(path, f"bad line {line!r}") from None
            metric = f"nodemedic_pressure_{kind}_{window}_ratio"
            samples.append(Sample.of(metric, percent / 100, resource=resource))
    return samples
