"""/metrics: CPU per scrape and latency with 500 and 5,000 series, beside node_exporter.

The agent side is its real HTTP API (:class:`agent.api.ApiServer`, the /metrics handler,
the collector and the text renderer) in a process of its own, serving a view that holds
N samples of catalog metrics (network and disk series with one label each, as a host with
many interfaces or disks would have). Two cases:

* ``fresh``: every scrape sees new readings (new sample objects, as after a probe run),
  so the samples' text is rendered at every scrape: the worst case;
* ``cached``: no probe reported between scrapes, so the rendered text is reused.

The reference is Debian's prometheus-node-exporter (default collectors) in the same run.
Both are scraped back to back by one client with ``Accept-Encoding: gzip`` (as Prometheus
asks); CPU per scrape is the server process's CPU time (from /proc) over the scrapes
divided by their number; latency is the client's wall time per request.

Prints a table and writes bench/results/metrics_scrape.json.

Usage: python -m bench.metrics_scrape [--series 500 5000] [--scrapes 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from bench.common import (
    cpu_seconds,
    free_port,
    get,
    node_exporter,
    series_count,
    stop,
    wait_until_served,
    write_result,
)

# Catalog metrics with exactly one label, cycled through to make N series.
_METRICS = (
    ("nodemedic_network_receive_bytes_total", "interface"),
    ("nodemedic_network_transmit_bytes_total", "interface"),
    ("nodemedic_network_up", "interface"),
    ("nodemedic_network_errors_per_second", "interface"),
    ("nodemedic_disk_io_utilisation_ratio", "device"),
    ("nodemedic_disk_read_await_seconds", "device"),
)


class SyntheticView:
    """An :class:`agent.view.AgentView` with ``count`` samples and an otherwise idle agent."""

    def __init__(self, count: int, *, fresh: bool) -> None:
        from agent.model import Sample

        self._sample = Sample
        self._count = count
        self._fresh = fresh
        # Two sets of readings built up front, served in turn when fresh: every scrape sees
        # other sample objects and values, and building them is not counted as the scrape's.
        self._sets = itertools.cycle([self._make(0), self._make(1)])
        self._samples = next(self._sets)
        self.node_name = "bench"

    def _make(self, tick: int) -> list[Any]:
        per_metric = -(-self._count // len(_METRICS))
        out = []
        for index in range(self._count):
            metric, label = _METRICS[index // per_metric]
            value = float(1_000_000 + index * 17 + tick)
            out.append(self._sample.of(metric, value, **{label: f"dev{index % per_metric}"}))
        return out

    def latest_samples(self) -> Iterable[Any]:
        """The samples; other objects with other values at every call when ``fresh``."""
        if self._fresh:
            self._samples = next(self._sets)
        return self._samples

    def readiness(self) -> tuple[bool, str]:
        """Always ready."""
        return True, "ready"

    def probe_statuses(self) -> Sequence[Any]:
        """No probes."""
        return []

    def conditions(self) -> Sequence[Any]:
        """No conditions."""
        return []

    def events(self, *, type: str | None, since: int | None, limit: int) -> Sequence[Any]:
        """No events."""
        return []

    def mqtt_status(self) -> None:
        """No MQTT."""

    def event_counts(self) -> Mapping[str, int]:
        """None emitted."""
        return {}

    def bus_dropped(self) -> Mapping[str, int]:
        """None dropped."""
        return {}

    def loop_lag(self) -> float:
        """No lag."""
        return 0.0


def serve(count: int, fresh: bool, port: int, *, generic: bool = False) -> None:
    """Run the agent's API over a :class:`SyntheticView` until killed.

    ``generic`` renders with prometheus_client's ``generate_latest`` instead of the
    agent's own renderer: /metrics as it was before, for comparison.
    """
    from prometheus_client import generate_latest

    from agent.api import ApiServer
    from agent.metrics import MetricsRegistry

    if generic:
        MetricsRegistry.render = generate_latest  # type: ignore[method-assign,assignment]

    async def run() -> None:
        server = ApiServer(SyntheticView(count, fresh=fresh))
        await server.start("127.0.0.1", port)
        await asyncio.Event().wait()

    asyncio.run(run())


def scrape_figures(proc: subprocess.Popen[bytes], url: str, scrapes: int) -> dict[str, float]:
    """Scrape ``url`` ``scrapes`` times back to back; CPU per scrape and latency."""
    for _ in range(5):  # warm: first scrapes build memos and caches
        get(url, gzip=True)
    latencies = []
    cpu0 = cpu_seconds(proc.pid)
    for _ in range(scrapes):
        started = time.perf_counter()
        get(url, gzip=True)
        latencies.append(time.perf_counter() - started)
    cpu = cpu_seconds(proc.pid) - cpu0
    latencies.sort()
    return {
        "cpu_ms_per_scrape": 1000 * cpu / scrapes,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "series": float(series_count(get(url))),
    }


@contextlib.contextmanager
def agent_server(
    count: int, fresh: bool, *, generic: bool = False
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Start the agent's API over ``count`` synthetic series in a child process."""
    port = free_port()
    args = [sys.executable, "-m", "bench.metrics_scrape", "--serve", str(count), str(port)]
    args += ["--fresh"] if fresh else []
    args += ["--generic"] if generic else []
    proc = subprocess.Popen(args)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_until_served(url, proc)
        yield proc, url
    finally:
        stop(proc)


def reference_cpu(median: Mapping[str, Mapping[str, float]]) -> float:
    """node_exporter's CPU per scrape in a median row."""
    return median["node_exporter"]["cpu_ms_per_scrape"]


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="50 scrapes, 1 run")
    parser.add_argument("--serve", type=int, nargs=2, metavar=("SERIES", "PORT"))
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--generic", action="store_true", help="render with generate_latest")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], args.fresh, args.serve[1], generic=args.generic)
        return
    if args.quick:
        args.scrapes, args.repeat = 50, 1
    print(f"/metrics, gzip, {args.scrapes} scrapes back to back, median of {args.repeat} runs:")
    header = ("server", "series", "CPU ms/scrape", "p50 ms", "p99 ms", "CPU vs n_e")
    print("  " + " ".join(f"{h:>17s}" for h in header))
    results: dict[str, Any] = {}
    for count, fresh in itertools.product(args.series, (True, False)):
        name = f"agent {count} {'fresh' if fresh else 'cached'}"
        runs = []
        for _ in range(args.repeat):
            with node_exporter() as (exporter, exporter_url):
                reference = scrape_figures(exporter, exporter_url, args.scrapes)
            with agent_server(count, fresh) as (proc, url):
                agent = scrape_figures(proc, url, args.scrapes)
            run = {"agent": agent, "node_exporter": reference}
            if fresh:
                with agent_server(count, fresh, generic=True) as (proc, url):
                    run["generate_latest"] = scrape_figures(proc, url, args.scrapes)
            runs.append(run)
        median = {
            side: {key: statistics.median(run[side][key] for run in runs) for key in runs[0][side]}
            for side in runs[0]
        }
        ratio = median["agent"]["cpu_ms_per_scrape"] / reference_cpu(median)
        results[name] = {"runs": runs, "median": median, "cpu_ratio": ratio}
        shown_rows = [("agent", name, f"{ratio:17.2f}"), ("node_exporter", "  node_exporter", "")]
        if "generate_latest" in median:
            before = median["generate_latest"]["cpu_ms_per_scrape"]
            shown_rows.append(
                ("generate_latest", "  generate_latest", f"{before / reference_cpu(median):17.2f}")
            )
        for side, label, shown in shown_rows:
            row = median[side]
            print(
                f"  {label:>17s} {row['series']:17.0f} {row['cpu_ms_per_scrape']:17.2f} "
                f"{row['p50_ms']:17.2f} {row['p99_ms']:17.2f} {shown}"
            )
    print(f"  written to {write_result('metrics_scrape', results)}")


if __name__ == "__main__":
    main()
