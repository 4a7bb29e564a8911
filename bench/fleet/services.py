"""The fleet bench's services: one Mosquitto for a thousand clients, one etcd, and a watch.

:class:`FleetBroker` runs ``mosquitto`` with one anonymous loopback listener on an
ephemeral port, no connection limit (``max_connections -1``), no persistence and an
unbounded queue per client (a thousand replies arrive in one burst at the collector).
etcd is :class:`tests.etcd.EtcdServer`. Both die with the bench (``PR_SET_PDEATHSIG``)
and are stopped by PID.

:class:`SlotWatch` is an etcd watch on the budget's slot keys, independent of the
agents: it keeps the slots held after every revision, the most at once, and a timeline.
"""

from __future__ import annotations

__all__ = ["FleetBroker", "SlotWatch", "raise_fd_limit"]

import asyncio
import base64
import json
import resource
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.brokers import HOST, _die_with_parent, free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise this process's soft RLIMIT_NOFILE (children inherit it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


class FleetBroker:
    """A ``mosquitto`` child process for the simulated fleet.

    Args:
        workdir: holds the config and the log.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The MQTT URL of the listener."""
        return f"mqtt://{HOST}:{self.port}"

    def log(self) -> str:
        """What the broker logged."""
        path = self.workdir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts a connection."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {HOST}\n"
            "allow_anonymous true\n"
            "max_connections -1\n"
            "persistence false\n"
            "max_queued_messages 0\n"
            "max_inflight_messages 0\n"
            f"log_dest file {self.workdir / 'mosquitto.log'}\n"
            "log_type error\nlog_type warning\n"
        )
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, no locks
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log()}")
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
            except OSError:
                time.sleep(0.05)
            else:
                return
        raise RuntimeError(f"mosquitto did not listen within {timeout}s: {self.log()}")

    def stop(self) -> None:
        """SIGTERM the broker by its PID; SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


class SlotWatch:
    """The fleet budget's slot keys as etcd's own watch reports them.

    Attributes:
        held: slot keys existing now.
        most: the most slot keys held at once after any revision.
        grants: slot keys created.
        timeline: ``(monotonic seconds, slots held)`` after every revision that changed it.
    """

    def __init__(self, url: str, prefix: str) -> None:
        self._url = url
        self._prefix = prefix
        self.held: set[str] = set()
        self.most = 0
        self.grants = 0
        self.timeline: list[tuple[float, int]] = []
        self.ready = asyncio.Event()

    async def run(self) -> None:
        """Watch until cancelled."""
        end = self._prefix[:-1] + chr(ord(self._prefix[-1]) + 1)
        request = {"create_request": {"key": _b64(self._prefix), "range_end": _b64(end)}}
        async with (
            aiohttp.ClientSession(read_bufsize=1 << 22) as session,
            session.post(f"{self._url}/v3/watch", json=request, timeout=None) as resp,
        ):
            async for line in resp.content:
                result = json.loads(line)["result"]
                self._apply(result.get("events", ()))
                self.ready.set()

    def _apply(self, events: list[dict[str, Any]]) -> None:
        revision = None
        for event in events:
            kv = event["kv"]
            if kv.get("mod_revision") != revision:
                self._record()  # the state after the previous revision
                revision = kv.get("mod_revision")
            key = base64.b64decode(kv["key"]).decode()
            if event.get("type") == "DELETE":
                self.held.discard(key)
            elif key not in self.held:
                self.held.add(key)
                self.grants += 1
        self._record()

    def _record(self) -> None:
        self.most = max(self.most, len(self.held))
        if not self.timeline or self.timeline[-1][1] != len(self.held):
            self.timeline.append((time.monotonic(), len(self.held)))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
