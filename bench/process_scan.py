"""Process scan cost per process: the processes probe beside a plain /proc reader and psutil.

Starts 100, 500 and 2,000 real ``/bin/sleep`` processes (argv[0] ``nodemedic-bench-...``),
then, in the same run and interleaved, times one full pass of each reader over every
process on the host, and divides by the number of processes /proc listed. The time is
this thread's CPU time (user + system, so the kernel's work formatting /proc files counts),
not wall time: on a shared machine wall time mostly measures waiting for a CPU.

* ``probe 3 groups``: the processes probe with a realistic config: a ``comm`` group, a
  ``user`` group and a ``cmdline`` group whose members are the bench processes (so it
  counts their descriptors and reads their limits, as it would for a real service).
* ``probe all``: the probe with one group every process matches (``cmdline: "^"``): the
  full set of figures for every process, the like-for-like comparison with the next two.
  It counts descriptors and reads limits on every pass here (``fd_refresh=0``; the agent
  does every 10 s), and keeps each process's ``cmdline`` and ``stat`` open between
  passes, as the agent does.
* ``plain /proc``: a straightforward Python reader of the same fields for every process,
  opening each file afresh: cmdline, stat (name, state, CPU, threads, start, RSS), the
  fd directory, limits.
* ``psutil``: ``process_iter`` with the same fields (name, cmdline, uids, cpu_times,
  memory_info, num_threads, num_fds, status, create_time) plus ``rlimit(NOFILE)``.

Prints a table in microseconds per process (median of the repeats) and writes
bench/results/process_scan.json. The processes are killed and reaped before it exits.

Usage: python -m bench.process_scan [--counts 100 500 2000] [--repeat 7]
"""

# The plain reader is the baseline a straightforward agent would write: open() and
# os.listdir on str paths, as the "plain Python" figure means.
# ruff: noqa: PTH123, PTH208

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil

from agent.config import ProcessesProbeConfig
from agent.probes.processes import FD_REFRESH, ProcessesProbe

MAX_PROCESSES = 2_000
"""The most children the bench starts, whatever it is asked."""

PSUTIL_ATTRS = [
    "name",
    "cmdline",
    "uids",
    "cpu_times",
    "memory_info",
    "num_threads",
    "num_fds",
    "status",
    "create_time",
]


def spawn(count: int, tag: str) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` sleeping children named ``tag``."""
    return [
        subprocess.Popen(
            [tag, "3600"],
            executable="/bin/sleep",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


def reap(children: list[subprocess.Popen[bytes]]) -> None:
    """Kill and reap every child."""
    for child in children:
        if child.poll() is None:
            child.kill()
    for child in children:
        child.wait(timeout=30)


def plain_pass() -> int:
    """Read every field for every process, as a simple plain-Python agent would."""
    seen = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        base = f"/proc/{name}/"
        try:
            with open(base + "cmdline", "rb") as f:
                f.read()
            with open(base + "stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            int(fields[11]) + int(fields[12])
            int(fields[17]), int(fields[19]), int(fields[21])
            len(os.listdir(base + "fd"))
            with open(base + "limits", "rb") as f:
                f.read().split(b"Max open files")[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        seen += 1
    return seen


def psutil_pass() -> int:
    """The same fields through psutil."""
    seen = 0
    for proc in psutil.process_iter(PSUTIL_ATTRS):
        try:
            proc.rlimit(resource.RLIMIT_NOFILE)
        except psutil.Error:
            continue
        seen += 1
    return seen


def probe_pass(probe: ProcessesProbe) -> Callable[[], int]:
    """One collect() of the probe, in this thread."""

    def run() -> int:
        return len(probe.collect())

    return run


def make_probe(groups: list[dict[str, str]], *, fd_refresh: float = FD_REFRESH) -> ProcessesProbe:
    """A probe with the given groups, read directly (no executor)."""
    config = ProcessesProbeConfig.model_validate({"groups": groups})
    return ProcessesProbe(groups=config.groups, fd_refresh=fd_refresh)


def measure(count: int, repeat: int) -> dict[str, float]:
    """Start ``count`` processes and time each reader; microseconds per process."""
    tag = f"nodemedic-bench-{uuid.uuid4().hex[:8]}"
    children = spawn(count, tag)
    three = make_probe(
        [
            {"name": "sshd", "comm": "sshd"},
            {"name": "daemon", "user": "daemon"},
            {"name": "bench", "cmdline": f"^{tag} "},
        ]
    )
    everything = make_probe([{"name": "all", "cmdline": "^"}], fd_refresh=0)
    try:
        time.sleep(0.5 + count / 1000)  # let them all exec
        readers: dict[str, Callable[[], int]] = {
            "probe 3 groups": probe_pass(three),
            "probe all": probe_pass(everything),
            "plain /proc": plain_pass,
            "psutil": psutil_pass,
        }
        for read in readers.values():
            read()  # warm: the probe's first run has no CPU window, psutil builds its cache
        times: dict[str, list[float]] = {name: [] for name in readers}
        total = 0
        for _ in range(repeat):
            total = sum(1 for name in os.listdir("/proc") if name.isdigit())
            for name, read in readers.items():
                started = time.thread_time()
                read()
                times[name].append((time.thread_time() - started) / total * 1e6)
        result = {name: statistics.median(values) for name, values in times.items()}
        result["processes in /proc"] = float(total)
        return result
    finally:
        three.close()  # and the files they hold open
        everything.close()
        reap(children)


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    counts = [min(count, MAX_PROCESSES) for count in args.counts]
    results = {count: measure(count, args.repeat) for count in counts}
    columns = ["probe 3 groups", "probe all", "plain /proc", "psutil"]
    print(f"process scan, CPU us per process (median of {args.repeat}), {os.cpu_count()} CPUs:")
    print(f"  {'started':>8s} {'in /proc':>9s} " + " ".join(f"{c:>15s}" for c in columns))
    for count, row in results.items():
        cells = " ".join(f"{row[c]:15.1f}" for c in columns)
        print(f"  {count:8d} {row['processes in /proc']:9.0f} {cells}")
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "process_scan.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
