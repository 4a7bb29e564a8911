"""What the benchmarks share: reading a process's CPU and memory from /proc, ports,
sleeping children to fill the process table, and node_exporter as the reference.

CPU is read per process (the sum over its threads of ``/proc/PID/task/*/schedstat``, in
nanoseconds), so other load on a shared machine does not count, only what the process
itself ran; /proc/PID/stat's utime + stime say the same in 10 ms ticks, too coarse for a
process that runs a few milliseconds a second.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
MAX_CHILDREN = 2_000
"""The most sleeping children any bench starts, whatever it is asked."""


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid``, user and system, in seconds (ns resolution)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
            continue
    return total / 1e9


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def get(url: str, *, gzip: bool = False) -> bytes:
    """The body of a GET on loopback (still compressed when ``gzip``)."""
    headers = {"Accept-Encoding": "gzip"} if gzip else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback only
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - loopback only
        body: bytes = resp.read()
        return body


def wait_until_served(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers; fail when ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            get(url)
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{url} was not served (exit code {proc.poll()})") from None
            time.sleep(0.1)
        else:
            return


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def sleepers(count: int, tag: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` (at most :data:`MAX_CHILDREN`) ``/bin/sleep`` children whose argv[0] is
    ``tag``; killed and reaped on exit."""
    children = [
        subprocess.Popen(
            [tag, "3600"],
            executable="/bin/sleep",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(min(count, MAX_CHILDREN))
    ]
    try:
        time.sleep(0.5 + count / 1000)  # let them all exec
        yield children
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
        for child in children:
            child.wait(timeout=30)


@contextlib.contextmanager
def node_exporter() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Debian's prometheus-node-exporter with its default collectors on a loopback port.

    Yields:
        The process and its /metrics URL.
    """
    if not os.access(NODE_EXPORTER, os.X_OK):
        raise RuntimeError(f"{NODE_EXPORTER} missing: apt-get install prometheus-node-exporter")
    port = free_port()
    proc = subprocess.Popen(
        [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_until_served(url, proc)
        yield proc, url
    finally:
        stop(proc)


def series_count(text: bytes) -> int:
    """Sample lines in a Prometheus text exposition."""
    return sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))


def write_result(name: str, result: Any) -> Path:
    """Write ``result`` to bench/results/<name>.json; returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path


def percentiles(values: list[float]) -> dict[str, float]:
    """n, p50, p90, p99 and max of ``values`` (seconds), the latter four in milliseconds.

    p90 and p99 are nearest-rank: the value at rank ceil(q * n), never interpolated.
    """
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    return {
        "n": len(ordered),
        "p50_ms": statistics.median(ordered) * 1e3,
        "p90_ms": pick(0.90) * 1e3,
        "p99_ms": pick(0.99) * 1e3,
        "max_ms": ordered[-1] * 1e3,
    }
