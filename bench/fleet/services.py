"""The fleet bench's services: one Mosquitto for a thousand clients, one etcd, and a watch.

:class:`FleetBroker` runs ``mosquitto`` with one anonymous loopback listener on an
ephemeral port, no connection limit (``max_connections -1``), no persistence and an
unbounded queue per client (a thousand replies arrive in one burst at the collector).
etcd is :class:`tests.etcd.EtcdServer`. Both die with the bench (``PR_SET_PDEATHSIG``)
and are stopped by PID.

The independent watch on the budget's slot keys is :class:`tests.etcd.SlotWatch`, the
same observer the fleet budget's tests use.
"""

from __future__ import annotations

__all__ = ["FleetBroker", "raise_fd_limit"]

import resource
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

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
            "set_tcp_nodelay true\n"  # as the README recommends
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
