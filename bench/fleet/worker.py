"""A worker process of the fleet bench: a few hundred simulated nodes on one event loop.

``python -m bench.fleet.worker`` speaks JSON lines: the first line on stdin is the start
message ``{"spec": {...}, "nodes": [...], "first": INDEX, "root": DIR}``; the worker
starts one real :class:`~agent.runtime.Agent` per node (see :mod:`bench.fleet.node`),
waits until every node's MQTT link is up and prints ``{"ready": ..., "rss_kib": ...,
"floor_kib": ...}`` (the floor is the RSS with everything imported and no node yet).
Then each stdin line is an order, answered by one stdout line:

* ``{"op": "fail", "nodes": [...]}``: those nodes' synthetic load breaches from now on;
* ``{"op": "stats"}``: the RSS and how many nodes are still failing;
* ``{"op": "stop"}``: every agent stops as on SIGTERM; the worker exits.

The worker dies with its parent (``PR_SET_PDEATHSIG``), so a killed bench leaves none.
"""

from __future__ import annotations

__all__ = ["main", "rss_kib"]

import asyncio
import contextlib
import ctypes
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from agent.runtime import Agent
from bench.fleet.node import FAULTS, NodeSpec, SyntheticLoad, node_settings

_PR_SET_PDEATHSIG = 1
_START_TIMEOUT = 300.0
_STOP_TIMEOUT = 60.0


class _Silent:
    """No systemd to notify: 1,000 agents in one process are not units."""

    def notify(self, state: str) -> bool:
        """Ignore ``state``."""
        return False


def rss_kib(pid: int | str = "self") -> int:
    """VmRSS of a process in KiB (0 when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _lines() -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=1 << 24)
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _serve(reader: asyncio.StreamReader) -> None:
    start = json.loads(await reader.readline())
    spec = NodeSpec(**start["spec"])
    root = Path(start["root"])
    names: list[str] = start["nodes"]
    floor = rss_kib()
    agents = [
        Agent(
            node_settings(spec, name, start["first"] + offset, root),
            probes=[SyntheticLoad(name, spec.interval)],
            notifier=_Silent(),
        )
        for offset, name in enumerate(names)
    ]
    runs = [
        asyncio.create_task(agent.run(), name=f"node:{name}")
        for agent, name in zip(agents, names, strict=True)
    ]
    deadline = time.monotonic() + _START_TIMEOUT
    while not all(_connected(agent) for agent in agents):
        failed = [task for task in runs if task.done()]
        if failed or time.monotonic() > deadline:
            _say({"error": f"{len(failed)} nodes ended, {_count_connected(agents)} connected"})
            return
        await asyncio.sleep(0.2)
    _say({"ready": len(agents), "rss_kib": rss_kib(), "floor_kib": floor})
    try:
        while line := await reader.readline():
            order = json.loads(line)
            if order["op"] == "fail":
                FAULTS.update(order["nodes"])
                _say({"failing": len(FAULTS)})
            elif order["op"] == "stats":
                _say(
                    {
                        "rss_kib": rss_kib(),
                        "failing": len(FAULTS),
                        "connected": _count_connected(agents),
                    }
                )
            elif order["op"] == "stop":
                break
    finally:
        for agent in agents:
            agent.request_stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*runs, return_exceptions=True), _STOP_TIMEOUT)
        _say({"stopped": sum(task.done() for task in runs)})


def _connected(agent: Agent) -> bool:
    status = agent.mqtt_status()
    return status is not None and status.state.value == "connected"


def _count_connected(agents: list[Agent]) -> int:
    return sum(_connected(agent) for agent in agents)


def main() -> None:
    """Entry point: serve the JSON-lines protocol on stdin/stdout."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")

    async def run() -> None:
        await _serve(await _lines())

    asyncio.run(run())


if __name__ == "__main__":
    main()
