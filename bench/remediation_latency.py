"""Remediation latency: from a unit's crash to the unit active again by the agent's hand.

Root: systemd booted in nspawn, Mosquitto on loopback, the real agent (a ``nodemedic
run`` process) and a ``mosquitto_sub`` stamping its events (see :mod:`bench.latency`).
A unit running ``sleep infinity`` with no ``Restart=`` (so systemd itself restarts
nothing; ``NRestarts`` stays 0, checked) is killed with SIGKILL. The rule fires with
``for: 0s`` (no hold time: none is subtracted, none is in the figures) and an enforce
playbook restarts the unit through ``systemd.restart_unit`` (cooldown 0 s, no run limit
or loop guard in reach). Each round waits for the run's ``remediation.succeeded`` event,
then reads from systemd:

* crash: ``InactiveEnterTimestampMonotonic``, when the unit went ``failed`` (it is
  kept through the restart, unlike ``ExecMainExitTimestampMonotonic``, which a new start
  clears);
* active again: ``ActiveEnterTimestampMonotonic`` after the engine's restart.

Figures, each from the crash: the unit active again (the headline); the
``remediation.succeeded`` event at the subscriber (it includes verification: the condition
seen resolved); and where the time goes, from the agent's own event times (``time``, the
wall clock at emission, turned into CLOCK_MONOTONIC like the subscriber's stamps): the
``condition.firing`` event emitted and received, ``remediation.started`` emitted (gates
passed, journal written), ``remediation.step`` emitted (the restart job done and the unit
read back).

Prints n, p50/p90/p99/max and writes bench/results/remediation_latency.json.

Usage: python -m bench.remediation_latency [--rounds 50]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.common import percentiles, write_result
from bench.latency import (
    SLEEPER,
    Delivery,
    EventTap,
    agent_settings,
    booted_systemd,
    emitted_at,
    event_tap,
    is_event,
    mosquitto,
    only_probe,
    print_figures,
    running_agent,
    systemd_times,
)
from tests.brokers import MosquittoBroker
from tests.nspawn import NspawnSystemd

RULE = "bench-unit-failed"
PLAYBOOK = "bench-restart"
CRASH = "InactiveEnterTimestampMonotonic"
ACTIVE = "ActiveEnterTimestampMonotonic"
MILESTONES = ("condition.firing", "remediation.started", "remediation.step")
"""The events each round's breakdown times, in the order the agent emits them."""


def _playbook() -> dict[str, Any]:
    return {
        "name": PLAYBOOK,
        "mode": "enforce",
        "trigger": {"conditions": [RULE]},
        "target": "{labels.unit}",
        "preconditions": [{"condition_firing": True}],
        "steps": [{"action": "systemd.restart_unit", "params": {"unit": "{target}"}}],
        "verify": {"condition_resolved_within": "30s"},
        "safety": {
            "cooldown": "0s",
            "max_runs": {"count": 1_000_000, "per": "1h"},
            "loop_guard": {"returns": 1_000_000, "within": "1s"},
        },
    }


def _round(container: NspawnSystemd, tap: EventTap, unit: str) -> dict[str, float]:
    """Crash ``unit`` once; seconds from the crash to each milestone of its remediation."""
    before = container.systemctl_show(unit, "InvocationID")["InvocationID"]
    tap.drain()
    container.run("systemctl", "kill", "--signal=KILL", unit)
    got = tap.until(is_event("remediation.succeeded", PLAYBOOK, target=unit))
    times = systemd_times(container, unit, CRASH, ACTIVE)
    after = container.systemctl_show(unit, "ActiveState", "NRestarts", "InvocationID")
    if after["ActiveState"] != "active" or after["InvocationID"] == before:
        raise RuntimeError(f"{unit} was not restarted: {after}")
    if after["NRestarts"] != "0":
        raise RuntimeError(f"systemd restarted {unit} itself: {after}")
    crash = times[CRASH]
    first: dict[str, Delivery] = {}
    for delivery in got:
        first.setdefault(str(delivery.event["type"]).removeprefix("io.nodemedic."), delivery)
    fired, started, step = (first[k] for k in MILESTONES)
    return {
        "crash -> firing emitted": emitted_at(fired.event) - crash,
        "crash -> firing event received": fired.at - crash,
        "crash -> run started emitted": emitted_at(started.event) - crash,
        "crash -> unit active (engine restart)": times[ACTIVE] - crash,
        "crash -> restart step emitted": emitted_at(step.event) - crash,
        "crash -> succeeded event received": got[-1].at - crash,
    }


def rounds_of(workdir: Path, broker: MosquittoBroker, rounds: int) -> dict[str, Any]:
    """Crash a unit ``rounds`` times and time the engine bringing it back."""
    books = workdir / "playbooks"
    books.mkdir(parents=True)
    (books / f"{PLAYBOOK}.yaml").write_text(json.dumps(_playbook()), encoding="utf-8")
    series: dict[str, list[float]] = {}
    with booted_systemd(workdir) as container:
        unit = container.unit_name("bench-heals")
        container.install_unit(unit, SLEEPER)
        probe = {"units": [unit], "interval": "60s", "bus": container.bus_address}
        rule = {"name": RULE, "metric": "nodemedic_unit_failed", "op": "==", "threshold": 1}
        remediation = {
            "playbooks_dir": str(books),
            "builtin_playbooks": False,
            "pause_file": str(workdir / "pause"),
        }
        settings = agent_settings(
            broker, probes=only_probe("units", probe), rules=[rule], remediation=remediation
        )
        with event_tap(broker) as tap, running_agent(workdir / "agent", settings):
            container.run("systemctl", "start", unit)
            for _ in range(rounds):
                for name, seconds in _round(container, tap, unit).items():
                    series.setdefault(name, []).append(seconds)
    return {name: percentiles(values) for name, values in series.items()}


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=50, help="unit crashes")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("remediation_latency needs root (systemd-nspawn)")
    with (
        tempfile.TemporaryDirectory(prefix="nodemedic-bench-") as tmp,
        mosquitto(Path(tmp)) as broker,
    ):
        figures = rounds_of(Path(tmp) / "units", broker, args.rounds)
    print_figures(figures)
    print(f"  written to {write_result('remediation_latency', figures)}")


if __name__ == "__main__":
    main()
