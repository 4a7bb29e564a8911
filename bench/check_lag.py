"""Event-loop lag while endpoint and custom checks hang, beside a run where none does.

One event loop runs the ``endpoints`` and ``custom`` probes as the agent does (iterating
``watch()``) and a ticker that sleeps 10 ms and records how late it wakes: that lateness
is the loop lag every other task of the agent would see. A real aiohttp server runs in a
thread of its own, so its work is not counted on the measured loop.

* ``healthy``: an HTTP check every 100 ms and a plugin every 200 ms.
* ``hanging``: the same, plus an HTTP endpoint that never answers, a plugin that sleeps
  forever and a plugin that forks children that sleep forever (each with a 1 s timeout
  and a 100 ms interval, so one of them is always hanging or being killed).

Prints lag (mean, p99, max) and how many runs the healthy checks completed against the
number their intervals allow. Usage: python -m bench.check_lag [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import stat
import statistics
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from aiohttp import web

from agent.probes.base import PushProbe
from agent.probes.checks import CheckOutcome
from agent.probes.custom import CustomCheck, CustomProbe
from agent.probes.endpoints import EndpointCheck, EndpointsProbe

_TICK = 0.010


class _CountingEndpoints(EndpointsProbe):
    runs: Counter[str]

    async def run_check(self, check: EndpointCheck) -> CheckOutcome:
        outcome = await super().run_check(check)
        self.runs[check.name] += 1
        return outcome


class _CountingCustom(CustomProbe):
    runs: Counter[str]

    async def run_check(self, check: CustomCheck) -> CheckOutcome:
        outcome = await super().run_check(check)
        self.runs[check.name] += 1
        return outcome


def _serve(port_box: list[int], ready: threading.Event, stop: threading.Event) -> None:
    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def hang(_: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response(text="late")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/ok", ok)
        app.router.add_get("/hang", hang)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port_box.append(sock.getsockname()[1])
        await web.SockSite(runner, sock).start()
        ready.set()
        await asyncio.to_thread(stop.wait)
        await runner.cleanup()

    asyncio.run(main())


def _script(directory: Path, name: str, body: str) -> str:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


async def _measure(probes: list[PushProbe], seconds: float) -> list[float]:
    async def follow(probe: PushProbe) -> None:
        async for _ in probe.watch():
            pass

    tasks = [asyncio.create_task(follow(p), name=f"bench:{p.name}") for p in probes]
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    end = loop.time() + seconds
    try:
        while loop.time() < end:
            expected = loop.time() + _TICK
            await asyncio.sleep(_TICK)
            lags.append(max(0.0, loop.time() - expected))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=10)
    return lags


def _scenario(port: int, directory: Path, *, hanging: bool, seconds: float) -> None:
    url = f"http://127.0.0.1:{port}"
    endpoints = [EndpointCheck(name="ok", interval=0.1, timeout=1.0, url=f"{url}/ok")]
    plugins = [
        CustomCheck(
            name="ok",
            interval=0.2,
            timeout=1.0,
            command=(_script(directory, "ok", "echo 'OK | n=1'\n"),),
        )
    ]
    if hanging:
        endpoints.append(EndpointCheck(name="hang", interval=0.1, timeout=1.0, url=f"{url}/hang"))
        plugins += [
            CustomCheck(
                name="hang",
                interval=0.1,
                timeout=1.0,
                command=(_script(directory, "hang", "exec sleep 600\n"),),
            ),
            CustomCheck(
                name="forker",
                interval=0.1,
                timeout=1.0,
                command=(_script(directory, "forker", "sleep 600 &\nsleep 600 &\nwait\n"),),
            ),
        ]
    http = _CountingEndpoints(endpoints, interval=1.0, timeout=1.0)
    custom = _CountingCustom(plugins, interval=1.0, timeout=1.0)
    http.runs, custom.runs = Counter(), Counter()
    lags = asyncio.run(_measure([http, custom], seconds))
    lags_ms = sorted(lag * 1000 for lag in lags)
    p99 = lags_ms[int(len(lags_ms) * 0.99) - 1]
    name = "hanging" if hanging else "healthy"
    print(
        f"{name:8} lag ms: mean {statistics.fmean(lags_ms):6.2f}  p99 {p99:6.2f}  "
        f"max {lags_ms[-1]:6.2f}   ok runs: http {http.runs['ok']}/{int(seconds / 0.1)}  "
        f"plugin {custom.runs['ok']}/{int(seconds / 0.2)}   hanging runs timed out: "
        f"http {http.runs['hang']}, plugin {custom.runs['hang']}, forker {custom.runs['forker']}"
    )


def main() -> None:
    """Run both scenarios and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the checks' transitions are expected here
    port_box: list[int] = []
    ready, stop = threading.Event(), threading.Event()
    server = threading.Thread(target=_serve, args=(port_box, ready, stop), name="bench-server")
    server.start()
    ready.wait(10)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"python {sys.version.split()[0]}, {args.seconds:g} s per scenario, tick 10 ms")
            for hanging in (False, True):
                _scenario(port_box[0], Path(tmp), hanging=hanging, seconds=args.seconds)
    finally:
        stop.set()
        server.join(10)


if __name__ == "__main__":
    main()
