"""Network interface state and counters from ``/sys/class/net``."""

from __future__ import annotations

__all__ = ["NetworkProbe"]

import logging
import re
import time
from pathlib import Path

from agent.model import Sample, labelset
from agent.probes.base import BlockingProbe, Clock, parse_error, read_text

log = logging.getLogger(__name__)

# statistics file -> metric; the four error and drop counters also feed the rate.
_COUNTERS = (
    ("rx_bytes", "nodemedic_network_receive_bytes_total"),
    ("tx_bytes", "nodemedic_network_transmit_bytes_total"),
    ("rx_errors", "nodemedic_network_receive_errors_total"),
    ("tx_errors", "nodemedic_network_transmit_errors_total"),
    ("rx_dropped", "nodemedic_network_receive_drops_total"),
    ("tx_dropped", "nodemedic_network_transmit_drops_total"),
)
_TROUBLE = ("rx_errors", "tx_errors", "rx_dropped", "tx_dropped")


class NetworkProbe(BlockingProbe):
    """Emits per-interface up state, byte, error and drop counters, and the error rate.

    An interface is up when its ``operstate`` is ``up``, or ``unknown`` with carrier
    (loopback and many virtual or tun devices never report ``up``). The error rate
    covers the time since the previous run; it is 0 on the first run and for an
    interface seen for the first time. An interface that vanishes while being read
    is left out of that run.

    Args:
        interval: seconds between runs.
        timeout: seconds one run may take.
        sys: where sysfs is mounted.
        exclude_interfaces: regular expression (``re.search``) for names to leave out.
        clock: monotonic seconds.

    Raises:
        re.error: when ``exclude_interfaces`` is not a valid regular expression.
    """

    def __init__(
        self,
        *,
        interval: float = 10.0,
        timeout: float = 10.0,
        sys: Path = Path("/sys"),
        exclude_interfaces: str | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(name="network", interval=interval, timeout=timeout, clock=clock)
        self._net = sys / "class" / "net"
        self._exclude = re.compile(exclude_interfaces) if exclude_interfaces else None
        self._previous: dict[str, int] = {}
        self._previous_time = 0.0

    def collect(self) -> list[Sample]:
        """Read every interface's state and statistics."""
        names = sorted(entry.name for entry in self._net.iterdir())
        now = self._clock()
        elapsed = now - self._previous_time
        trouble_now: dict[str, int] = {}
        samples: list[Sample] = []
        for name in names:
            if self._exclude is not None and self._exclude.search(name):
                continue
            try:
                up, counters = self._read_interface(self._net / name)
            except FileNotFoundError as err:
                log.debug("probe network: interface %s went away: %s", name, err)
                continue
            trouble = sum(counters[key] for key in _TROUBLE)
            trouble_now[name] = trouble
            before = self._previous.get(name)
            rate = 0.0
            if before is not None and elapsed > 0 and trouble >= before:
                rate = (trouble - before) / elapsed
            labels = labelset(interface=name)  # one label set for the interface's 8 series
            samples.append(Sample("nodemedic_network_up", 1.0 if up else 0.0, labels))
            samples.extend(
                Sample(metric, float(counters[key]), labels) for key, metric in _COUNTERS
            )
            samples.append(Sample("nodemedic_network_errors_per_second", rate, labels))
        self._previous = trouble_now
        self._previous_time = now
        return samples

    def _read_interface(self, path: Path) -> tuple[bool, dict[str, int]]:
        state = read_text(path / "operstate").strip()
        up = state == "up" or (state == "unknown" and _has_carrier(path))
        counters: dict[str, int] = {}
        statistics = path / "statistics"
        for key, _metric in _COUNTERS:
            stat = statistics / key
            text = read_text(stat)
            try:
                counters[key] = int(text)
            except ValueError:
                raise parse_error(stat, f"expected a counter, got {text!r}") from None
        return up, counters


def _has_carrier(path: Path) -> bool:
    try:
        return read_text(path / "carrier").strip() == "1"
    except OSError:
        # EINVAL while the interface is administratively down: no carrier.
        return False
