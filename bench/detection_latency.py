"""Detection latency: from a breach to its ``condition.firing`` event at an MQTT subscriber.

The real agent (a ``nodemedic run`` process) publishes to Mosquitto on loopback; a
``mosquitto_sub`` stamps each event as it arrives (see :mod:`bench.latency`). Rules have
``for: 0s``, so no hold time is in the figures, and flap damping is off.

* unit failure (root: systemd booted in nspawn): a unit running ``sleep infinity`` with no
  ``Restart=`` is killed with SIGKILL and goes ``failed``; the units probe hears it from
  systemd's D-Bus signal (its resync is 60 s away). The breach is the unit's
  ``StateChangeTimestampMonotonic`` (also given from ``ExecMainExitTimestampMonotonic``,
  the main process's exit as systemd saw it). ``systemctl start`` then brings it back, and
  the latency of the ``resolved`` event from that state change is measured too.
* disk full (root: a loop device): a fresh 32 MiB ext4 image is losetup'd and mounted under
  a temporary directory, and a rule fires above 50 % used on that mount point. Each round
  waits a random part of the probe interval, writes a ballast file's first 12 MiB (below
  the threshold), then its last 8 MiB and fsyncs: the breach is when that returns. The
  filesystem probe is polled, so the latency is bounded by its interval (``--interval``):
  expect about half of it at the median and all of it at p99.

Prints n, p50/p90/p99/max and writes bench/results/detection_latency.json.

Usage: python -m bench.detection_latency [--rounds 100] [--disk-rounds 30] [--interval 1]
       [--only unit|disk]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import percentiles, write_result
from bench.latency import (
    SLEEPER,
    agent_settings,
    booted_systemd,
    event_tap,
    is_event,
    loop_disk,
    mosquitto,
    only_probe,
    print_figures,
    running_agent,
    systemd_times,
)
from tests.brokers import MosquittoBroker

UNIT_RULE = "bench-unit-failed"
DISK_RULE = "bench-disk-full"
MIB = 1024 * 1024


def unit_rounds(workdir: Path, broker: MosquittoBroker, rounds: int) -> dict[str, Any]:
    """Kill a unit ``rounds`` times; latencies of its firing and resolved events."""
    fired: list[float] = []
    from_exit: list[float] = []
    resolved: list[float] = []
    with booted_systemd(workdir) as container:
        unit = container.unit_name("bench-dies")
        container.install_unit(unit, SLEEPER)
        probe = {"units": [unit], "interval": "60s", "bus": container.bus_address}
        rule = {"name": UNIT_RULE, "metric": "nodemedic_unit_failed", "op": "==", "threshold": 1}
        settings = agent_settings(broker, probes=only_probe("units", probe), rules=[rule])
        with event_tap(broker) as tap, running_agent(workdir / "agent", settings):
            for round_ in range(rounds):
                tap.drain()
                container.run("systemctl", "start", unit)
                if round_ > 0:  # the previous round's failure resolves
                    got = tap.next(is_event("condition.resolved", UNIT_RULE))
                    back = systemd_times(container, unit, "StateChangeTimestampMonotonic")
                    resolved.append(got.at - back["StateChangeTimestampMonotonic"])
                container.run("systemctl", "kill", "--signal=KILL", unit)
                got = tap.next(is_event("condition.firing", UNIT_RULE))
                times = systemd_times(
                    container,
                    unit,
                    "StateChangeTimestampMonotonic",
                    "ExecMainExitTimestampMonotonic",
                )
                if got.event["data"]["labels"].get("unit") != unit:
                    raise RuntimeError(f"firing for another unit: {got.event}")
                fired.append(got.at - times["StateChangeTimestampMonotonic"])
                from_exit.append(got.at - times["ExecMainExitTimestampMonotonic"])
    return {
        "unit failed -> firing": percentiles(fired),
        "unit exit -> firing": percentiles(from_exit),
        "unit active -> resolved": percentiles(resolved),
    }


def _fill(mnt: Path) -> float:
    """Write the ballast below the threshold, then past it; CLOCK_MONOTONIC when done."""
    with (mnt / "ballast").open("wb") as f:
        f.write(b"\xa5" * 12 * MIB)
        f.flush()
        os.fsync(f.fileno())
        f.write(b"\x5a" * 8 * MIB)
        f.flush()
        os.fsync(f.fileno())
        return time.monotonic()


def disk_rounds(workdir: Path, broker: MosquittoBroker, rounds: int, interval: float) -> Any:
    """Fill a loop-mounted disk ``rounds`` times; latencies of its firing events."""
    fired: list[float] = []
    with loop_disk(32) as mnt:
        rule = {
            "name": DISK_RULE,
            "metric": "nodemedic_filesystem_used_ratio",
            "labels": {"mountpoint": str(mnt)},
            "op": ">",
            "threshold": 0.5,
            "clear": 0.3,
        }
        probe = {"interval": f"{interval}s"}
        settings = agent_settings(broker, probes=only_probe("filesystem", probe), rules=[rule])
        with event_tap(broker) as tap, running_agent(workdir / "agent", settings):
            for _ in range(rounds):
                # Writes land anywhere on the probe's grid, not right after a run.
                time.sleep(random.uniform(0.0, interval))  # noqa: S311 - not for security
                tap.drain()
                written = _fill(mnt)
                got = tap.next(is_event("condition.firing", DISK_RULE))
                fired.append(got.at - written)
                (mnt / "ballast").unlink()
                os.sync()
                tap.next(is_event("condition.resolved", DISK_RULE))
    return {f"disk full -> firing (probe every {interval:g}s)": percentiles(fired)}


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=100, help="unit failures")
    parser.add_argument("--disk-rounds", type=int, default=30, help="disk fills")
    parser.add_argument("--interval", type=float, default=1.0, help="filesystem probe, s")
    parser.add_argument("--only", choices=["unit", "disk"])
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("detection_latency needs root (systemd-nspawn, losetup, mount)")
    figures: dict[str, Any] = {"disk_interval_seconds": args.interval}
    with (
        tempfile.TemporaryDirectory(prefix="nodemedic-bench-") as tmp,
        mosquitto(Path(tmp)) as broker,
    ):
        if args.only != "disk":
            figures |= unit_rounds(Path(tmp) / "units", broker, max(2, args.rounds))
        if args.only != "unit":
            figures |= disk_rounds(Path(tmp) / "disk", broker, args.disk_rounds, args.interval)
    print_figures(figures)
    print(f"  written to {write_result('detection_latency', figures)}")


if __name__ == "__main__":
    main()
