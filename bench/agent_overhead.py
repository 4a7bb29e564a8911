"""What the agent costs a host, beside Prometheus node_exporter in the same run.

For each count of extra processes (``/bin/sleep`` children, 0, 100, 500 and 2,000 by
default) it starts, side by side:

* ``nodemedic run`` with every probe at a 1 s interval and the default rules, its API on
  a loopback port scraped every ``--scrape`` seconds (15 s, as Prometheus is usually set);
  with extra processes, a process group (``cmdline``) watches all of them;
* Debian's ``prometheus-node-exporter`` with its default collectors on a loopback port,
  scraped once a second (the issue's reference: what a host pays for node metrics).

After a warm-up, both processes' CPU time (every thread, from /proc, so other load on the
machine does not count) and RSS are read over the same ``--seconds`` window. Each count
is repeated ``--repeat`` times; the table shows medians, with the ratio agent/node_exporter.

The agent runs as the shipped systemd unit starts it: the ``nodemedic run`` entry point,
with the ``Environment=`` settings of systemd/nodemedic.service (``PYTHONOPTIMIZE=2``;
the agent tunes malloc itself). What systemd adds besides, ``NOTIFY_SOCKET`` and the journal,
loads systemd-python's modules (about 0.9 MB more under the unit).

Prints a table and writes bench/results/agent_overhead.json. ``NODEMEDIC_BENCH_AGENT``
names another ``nodemedic`` executable to measure (an older build, for a before/after).

Usage: python -m bench.agent_overhead [--counts 0 100 500 2000] [--seconds 60]
       [--repeat 3] [--scrape 15] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from agent.probes.catalog import PROBE_NAMES
from bench.common import (
    cpu_seconds,
    free_port,
    get,
    node_exporter,
    rss_bytes,
    series_count,
    sleepers,
    stop,
    wait_until_served,
    write_result,
)

WARMUP = 5.0
UNIT = Path(__file__).resolve().parent.parent / "systemd" / "nodemedic.service"


def unit_environment(unit: Path = UNIT) -> dict[str, str]:
    """The variables the unit's ``Environment=`` lines set, as systemd would parse them."""
    env: dict[str, str] = {}
    for line in unit.read_text(encoding="utf-8").splitlines():
        if line.startswith("Environment="):
            for assignment in shlex.split(line.removeprefix("Environment=")):
                name, _, value = assignment.partition("=")
                env[name] = value
    return env


def agent_config(state: Path, port: int, tag: str | None) -> dict[str, Any]:
    """Every probe at 1 s; a process group over the sleepers named ``tag`` if given."""
    probes: dict[str, Any] = {name: {"interval": "1s"} for name in PROBE_NAMES}
    if tag is not None:
        probes["processes"]["groups"] = [{"name": "bench", "cmdline": f"^{tag} "}]
    return {
        "state_dir": str(state),
        "api": {"listen": f"127.0.0.1:{port}"},
        "log": {"level": "warning"},
        "probes": probes,
    }


def measure(seconds: float, scrape: float, tag: str | None) -> dict[str, float]:
    """One run of the agent (and node_exporter) over the current process table."""
    with tempfile.TemporaryDirectory(prefix="nodemedic-bench-") as tmp:
        port = free_port()
        path = Path(tmp) / "nodemedic.yaml"
        path.write_text(yaml.safe_dump(agent_config(Path(tmp) / "state", port, tag)))
        binary = os.environ.get("NODEMEDIC_BENCH_AGENT") or Path(sys.executable).with_name(
            "nodemedic"
        )
        agent = subprocess.Popen(
            [str(binary), "run", "--config", str(path)], env={**os.environ, **unit_environment()}
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_served(base + "/readyz", agent)
            with node_exporter() as (exporter, exporter_url):
                time.sleep(WARMUP)
                return _window(
                    seconds,
                    scrape,
                    agent=agent,
                    agent_url=base + "/metrics",
                    exporter=exporter,
                    exporter_url=exporter_url,
                )
        finally:
            stop(agent)


def _window(
    seconds: float,
    scrape: float,
    *,
    agent: subprocess.Popen[bytes],
    agent_url: str,
    exporter: subprocess.Popen[bytes],
    exporter_url: str,
) -> dict[str, float]:
    agent0, exporter0 = cpu_seconds(agent.pid), cpu_seconds(exporter.pid)
    t0 = time.monotonic()
    next_agent = next_exporter = t0
    agent_series = exporter_series = 0
    while (now := time.monotonic()) < t0 + seconds:
        if now >= next_exporter:
            exporter_series = series_count(get(exporter_url))
            next_exporter += 1.0
        if now >= next_agent:
            agent_series = series_count(get(agent_url))
            next_agent += scrape
        time.sleep(max(0.0, min(next_agent, next_exporter, t0 + seconds) - time.monotonic()))
    elapsed = time.monotonic() - t0
    agent_cpu = cpu_seconds(agent.pid) - agent0
    exporter_cpu = cpu_seconds(exporter.pid) - exporter0
    return {
        "agent_cpu_percent": 100 * agent_cpu / elapsed,
        "agent_rss_mib": rss_bytes(agent.pid) / 2**20,
        "agent_series": float(agent_series),
        "node_exporter_cpu_percent": 100 * exporter_cpu / elapsed,
        "node_exporter_rss_mib": rss_bytes(exporter.pid) / 2**20,
        "node_exporter_series": float(exporter_series),
        "cpu_ratio": agent_cpu / exporter_cpu if exporter_cpu else float("nan"),
        "seconds": elapsed,
    }


def import_floor_mib() -> float:
    """RSS of a bare Python that imported psutil, aiomqtt, aiohttp and prometheus_client."""
    code = (
        "import psutil, aiomqtt, aiohttp.web, prometheus_client\n"
        "print(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True)
    return int(out.stdout) / 1024


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[0, 100, 500, 2000])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scrape", type=float, default=15.0, help="agent scrape period, s")
    parser.add_argument("--quick", action="store_true", help="counts 0 500, 1 run x 20 s")
    args = parser.parse_args()
    if args.quick:
        args.counts, args.seconds, args.repeat = [0, 500], 20.0, 1
    floor = import_floor_mib()
    print(
        f"agent overhead: every probe at 1 s, /metrics every {args.scrape:g} s; node_exporter "
        f"scraped at 1 Hz; {args.repeat} x {args.seconds:.0f} s, median"
    )
    print(f"  import floor (python + psutil, aiomqtt, aiohttp, prometheus_client): {floor:.1f} MiB")
    print(f"  the unit's environment: {unit_environment() or 'none'}")
    header = ("extra procs", "agent CPU %", "agent RSS MiB", "n_e CPU %", "n_e RSS MiB", "ratio")
    print("  " + " ".join(f"{h:>13s}" for h in header))
    results: dict[str, Any] = {"import_floor_mib": floor, "scrape_seconds": args.scrape}
    for count in args.counts:
        tag = f"nodemedic-bench-{uuid.uuid4().hex[:8]}" if count else None
        with sleepers(count, tag or "unused"):
            runs = [measure(args.seconds, args.scrape, tag) for _ in range(args.repeat)]
        median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        results[str(count)] = {"runs": runs, "median": median}
        row = (
            median["agent_cpu_percent"],
            median["agent_rss_mib"],
            median["node_exporter_cpu_percent"],
            median["node_exporter_rss_mib"],
            median["cpu_ratio"],
        )
        print(f"  {count:13d} " + " ".join(f"{v:13.2f}" for v in row))
    print(f"  written to {write_result('agent_overhead', results)}")


if __name__ == "__main__":
    main()
