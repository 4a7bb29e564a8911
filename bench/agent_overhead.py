"""What the agent costs a host: CPU per sampling cycle and RSS with the default probes.

Starts ``nodemedic run`` with every default probe at a 1 s interval (the default rules,
the API on a loopback port scraped once a second, as Prometheus would), lets it warm up,
then reads the agent's CPU time and RSS from /proc over the measurement window.
Prints a table and writes bench/results/agent_overhead.json.

Usage: python -m bench.agent_overhead [--seconds 60] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from agent.probes.catalog import PROBE_NAMES


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` in nanosecond resolution (schedstat), in seconds.

    /proc/PID/stat counts in clock ticks (10 ms), too coarse for a process that uses a
    few milliseconds a second.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
            continue
    return total / 1e9


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback only
        return len(resp.read())


def measure(seconds: float, warmup: float, *, scrape: bool) -> dict[str, float]:
    """One run: start the agent, warm up, measure for ``seconds`` (scraping /metrics at
    1 Hz when ``scrape``), stop it."""
    with tempfile.TemporaryDirectory(prefix="nodemedic-bench-") as tmp:
        port = free_port()
        config = {
            "state_dir": f"{tmp}/state",
            "api": {"listen": f"127.0.0.1:{port}"},
            "log": {"level": "warning"},
            "probes": {name: {"interval": "1s"} for name in PROBE_NAMES},
        }
        path = Path(tmp) / "nodemedic.yaml"
        path.write_text(yaml.safe_dump(config))
        binary = Path(sys.executable).with_name("nodemedic")
        proc = subprocess.Popen([str(binary), "run", "--config", str(path)])
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    _get(base + "/readyz")
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("agent did not become ready") from None
                    time.sleep(0.1)
            time.sleep(warmup)
            cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
            scrape_bytes = 0
            end = t0 + seconds
            while time.monotonic() < end:
                if scrape:
                    scrape_bytes = _get(base + "/metrics")
                time.sleep(max(0.0, 1.0 - (time.monotonic() - t0) % 1.0))
            cpu1, t1 = _cpu_seconds(proc.pid), time.monotonic()
            rss = _rss_bytes(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    elapsed = t1 - t0
    return {
        "cpu_percent_of_one_core": 100 * (cpu1 - cpu0) / elapsed,
        "cpu_ms_per_cycle": 1000 * (cpu1 - cpu0) / elapsed,  # one cycle per second
        "rss_mib": rss / 2**20,
        "metrics_bytes": float(scrape_bytes),
        "seconds": elapsed,
    }


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, dict[str, object]] = {}
    print(
        f"agent overhead, default probes at 1 s, {args.repeat} runs x {args.seconds:.0f} s, median:"
    )
    print(f"  {'mode':28s} {'CPU % of a core':>16s} {'CPU ms/cycle':>13s} {'RSS MiB':>8s}")
    for mode, scrape in (("probes only", False), ("probes + /metrics at 1 Hz", True)):
        runs = [measure(args.seconds, args.warmup, scrape=scrape) for _ in range(args.repeat)]
        median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        results[mode] = {"runs": runs, "median": median}
        print(
            f"  {mode:28s} {median['cpu_percent_of_one_core']:16.2f} "
            f"{median['cpu_ms_per_cycle']:13.2f} {median['rss_mib']:8.1f}"
        )
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "agent_overhead.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
