"""systemd over D-Bus: container boot, call round trips, and signal-to-rules latency.

Boots the test systemd in systemd-nspawn (``tests/nspawn.py``; root), then:

* D-Bus round trips from the host to the container's systemd: ``ListUnitsByPatterns``
  (one call) and :meth:`SystemdClient.unit` (two ``GetAll`` calls in parallel);
* signal-to-rules latency: a unit that crashes every ~0.3 s under ``Restart=always``
  is watched by the units probe, whose updates go to a :class:`ConditionTracker` exactly
  as the runtime applies them. For every transition of the ``unit-failed`` condition
  (ok -> firing on a crash, firing -> resolved on the automatic restart) the latency is
  the host's CLOCK_MONOTONIC when the tracker returned the transition minus systemd's
  ``StateChangeTimestampMonotonic`` of that state change (the same clock: the container
  has no time namespace). It covers systemd emitting the signal, dbus-daemon routing it,
  dbus-fast decoding it, the probe building its update and the rules evaluating it.

Prints p50/p90/p99/max and writes bench/results/units_latency.json.

Usage: python -m bench.units_latency [--transitions 40] [--calls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from agent.config import RuleConfig
from agent.probes.catalog import metrics_of
from agent.probes.units import UnitsProbe
from agent.rules import ConditionTracker
from agent.systemd_dbus import SystemdClient
from bench.common import percentiles
from tests.nspawn import NspawnSystemd, ensure_rootfs, sweep_stale_containers

FLAPS = (
    "[Unit]\nStartLimitIntervalSec=0\n"
    "[Service]\nExecStart=/bin/sh -c 'sleep 0.2; exit 1'\nRestart=always\nRestartSec=100ms\n"
)
RESULTS = Path(__file__).parent / "results" / "units_latency.json"


async def _round_trips(bus: str, unit: str, calls: int) -> dict[str, dict[str, float]]:
    list_times: list[float] = []
    unit_times: list[float] = []
    async with SystemdClient(bus_address=bus, timeout=10.0) as client:
        for _ in range(calls):
            t0 = time.perf_counter()
            await client.list_units([unit])
            list_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await client.unit(unit)
            unit_times.append(time.perf_counter() - t0)
    return {
        "list_units (1 call)": percentiles(list_times),
        "unit (2 GetAll)": percentiles(unit_times),
    }


async def _signal_to_rules(bus: str, unit: str, transitions: int) -> list[float]:
    rule = RuleConfig.model_validate(
        {"name": "unit-failed", "metric": "nodemedic_unit_failed", "op": "==", "threshold": 1}
    )
    tracker = ConditionTracker([rule], flap_window=0.0, flap_limit=10**9)
    covered = frozenset(spec.name for spec in metrics_of("units"))
    probe = UnitsProbe(units=[unit], interval=60.0, timeout=10.0, bus_address=bus)
    latencies: list[float] = []
    updates = probe.watch()
    try:
        async with asyncio.timeout(transitions * 5 + 30):
            async for update in updates:
                if update.error is not None:
                    raise SystemExit(f"probe error: {update.error}")
                changed = tracker.observe(covered, update.samples, time.time())
                arrived = time.monotonic()
                state = probe.state(unit)
                if changed and state is not None and state.state_change > 0:
                    latencies.append(arrived - state.state_change)
                if len(latencies) >= transitions:
                    break
    finally:
        await updates.aclose()
    return latencies


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--transitions", type=int, default=40)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    sweep_stale_containers()
    rootfs = ensure_rootfs()
    with tempfile.TemporaryDirectory(prefix="nodemedic-bench-") as tmp:
        container = NspawnSystemd(Path(tmp), rootfs)
        try:
            container.boot()
            unit = container.unit_name("bench-flaps")
            container.install_unit(unit, FLAPS)
            trips = asyncio.run(_round_trips(container.bus_address, unit, args.calls))
            container.run("systemctl", "start", "--no-block", unit)
            latencies = asyncio.run(_signal_to_rules(container.bus_address, unit, args.transitions))
            container.run("systemctl", "stop", unit, check=False)
        finally:
            t0 = time.monotonic()
            container.stop()
            stop_seconds = time.monotonic() - t0
    to_rules = percentiles(latencies)
    figures = {
        "boot_seconds": container.boot_seconds,
        "stop_seconds": stop_seconds,
        "round_trips": trips,
        "signal_to_rules": to_rules,
    }
    print(f"nspawn boot to 'running': {container.boot_seconds:.2f} s, stop {stop_seconds:.2f} s")
    for name, stats in [*trips.items(), ("signal -> rules", to_rules)]:
        print(
            f"{name:22} n={stats['n']:<4.0f} p50 {stats['p50_ms']:7.2f} ms  "
            f"p90 {stats['p90_ms']:7.2f} ms  p99 {stats['p99_ms']:7.2f} ms  "
            f"max {stats['max_ms']:7.2f} ms"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
