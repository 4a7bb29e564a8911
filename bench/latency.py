"""What the detection and remediation latency benches share: a broker, the real agent, a
subscriber that stamps each event as it arrives, a booted systemd and a loop-mounted disk.

Every time here is CLOCK_MONOTONIC seconds, the clock systemd's ``*TimestampMonotonic``
properties use (the nspawn container has no time namespace, so it is the host's). The
subscriber is ``mosquitto_sub`` in its own process, so the bench's Python does not delay
a delivery: it stamps each message with the wall clock (``%U``), which the reader thread
turns into CLOCK_MONOTONIC with the offset between the two clocks read as it handles the
line (a few microseconds later; the offset drifts far slower than that).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.probes.catalog import PROBE_NAMES
from tests.brokers import MosquittoBroker, TestPKI
from tests.conftest import AgentProcess
from tests.nspawn import NspawnSystemd, ensure_rootfs, sweep_stale_containers

NODE = "bench-latency"
PREFIX = "nodemedic/v1"
MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
WAIT = 30.0
"""Seconds any one awaited event may take before the bench gives up."""

SLEEPER = "[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStart=/bin/sleep infinity\n"
"""A unit to kill: no ``Restart=``, and no start limit (the benches start it again and again)."""

Event = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event as the subscriber received it.

    Attributes:
        at: CLOCK_MONOTONIC seconds when ``mosquitto_sub`` received it.
        event: the CloudEvent.
    """

    at: float
    event: Event


class EventTap:
    """``mosquitto_sub`` on every event topic of the bench's node, QoS 1.

    Args:
        broker: the running broker.
    """

    def __init__(self, broker: MosquittoBroker) -> None:
        self._broker = broker
        self._filter = f"{PREFIX}/nodes/{NODE}/events/#"
        self._received: queue.Queue[Delivery] = queue.Queue()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        """Subscribe, and return once a message of the bench's own has come through."""
        self._proc = subprocess.Popen(
            [
                MOSQUITTO_SUB,
                *self._broker.cli_args("anon"),
                *("-q", "1", "-t", self._filter, "-F", "%U %p"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, name="event-tap", daemon=True)
        self._reader.start()
        marker = {"type": "bench.subscribed", "subject": str(time.monotonic())}
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            subprocess.run(
                [
                    MOSQUITTO_PUB,
                    *self._broker.cli_args("anon"),
                    *("-q", "1", "-t", f"{PREFIX}/nodes/{NODE}/events/bench.subscribed"),
                    *("-m", json.dumps(marker)),
                ],
                check=True,
                capture_output=True,
                timeout=WAIT,
            )
            with contextlib.suppress(TimeoutError):
                self.next(lambda e: e == marker, within=1.0)
                return
        raise RuntimeError("the subscriber never received the bench's own message")

    def next(self, match: Callable[[Event], bool], within: float = WAIT) -> Delivery:
        """The next delivery whose event satisfies ``match``; earlier ones are dropped.

        Raises:
            TimeoutError: when none arrives within ``within`` seconds.
        """
        return self.until(match, within)[-1]

    def until(self, match: Callable[[Event], bool], within: float = WAIT) -> list[Delivery]:
        """Every delivery up to and including the next whose event satisfies ``match``.

        Raises:
            TimeoutError: when none arrives within ``within`` seconds.
        """
        deadline = time.monotonic() + within
        got: list[Delivery] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching event within {within:g}s")
            try:
                delivery = self._received.get(timeout=remaining)
            except queue.Empty:
                continue
            got.append(delivery)
            if match(delivery.event):
                return got

    def drain(self) -> None:
        """Drop every delivery received so far."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._received.get_nowait()

    def stop(self) -> None:
        """Stop ``mosquitto_sub`` and its reader."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            offset = time.time() - time.monotonic()
            stamp, _, payload = line.rstrip("\n").partition(" ")
            try:
                event = json.loads(payload)
            except ValueError:
                continue
            self._received.put(Delivery(float(stamp) - offset, event))


def emitted_at(event: Event) -> float:
    """When the agent emitted ``event`` (its ``time``), in CLOCK_MONOTONIC seconds.

    Converted with the offset between the wall clock and CLOCK_MONOTONIC now, as the
    subscriber's stamps are (see :class:`EventTap`).
    """
    epoch = datetime.fromisoformat(str(event["time"])).timestamp()
    return epoch - (time.time() - time.monotonic())


def is_event(kind: str, subject: str | None = None, **data: Any) -> Callable[[Event], bool]:
    """A match for events of type ``io.nodemedic.<kind>`` whose ``data`` has these values."""

    def match(event: Event) -> bool:
        if event.get("type") != f"io.nodemedic.{kind}":
            return False
        if subject is not None and event.get("subject") != subject:
            return False
        body = event.get("data") or {}
        return all(body.get(key) == value for key, value in data.items())

    return match


def agent_settings(broker: MosquittoBroker, **settings: Any) -> dict[str, Any]:
    """An agent config: the bench's node, the broker, info logs, no flap damping."""
    return {
        "node": {"name": NODE},
        "log": {"level": "info"},
        "mqtt": {"url": broker.url("anon"), "topic_prefix": PREFIX},
        # A condition that fires once per round must not be held as flapping.
        "conditions": {"flap_window": "1s", "flap_limit": 1_000_000},
        **settings,
    }


@contextlib.contextmanager
def mosquitto(workdir: Path) -> Iterator[MosquittoBroker]:
    """Mosquitto on a loopback port of its own; stopped after."""
    broker = MosquittoBroker(workdir / "mosquitto", TestPKI.create(workdir / "pki"))
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@contextlib.contextmanager
def booted_systemd(workdir: Path) -> Iterator[NspawnSystemd]:
    """A real systemd booted in nspawn (root); shut down after."""
    sweep_stale_containers()
    container = NspawnSystemd(workdir / "nspawn", ensure_rootfs())
    try:
        container.boot()
        yield container
    finally:
        container.stop()


@contextlib.contextmanager
def event_tap(broker: MosquittoBroker) -> Iterator[EventTap]:
    """A started :class:`EventTap`; stopped after."""
    tap = EventTap(broker)
    try:
        tap.start()
        yield tap
    finally:
        tap.stop()


@contextlib.contextmanager
def running_agent(workdir: Path, settings: Mapping[str, Any]) -> Iterator[AgentProcess]:
    """A real ``nodemedic run`` process with ``settings``; stopped (or killed) after."""
    workdir.mkdir(parents=True, exist_ok=True)
    agent = AgentProcess(workdir, settings)
    agent.start()
    try:
        agent.wait_ready(timeout=60.0)
        yield agent
    except BaseException:
        print(agent.log()[-4000:])
        raise
    finally:
        try:
            agent.stop(timeout=30.0)
        except subprocess.TimeoutExpired:
            agent.kill()


def systemd_times(container: NspawnSystemd, unit: str, *props: str) -> dict[str, float]:
    """``*TimestampMonotonic`` properties of ``unit`` in CLOCK_MONOTONIC seconds (0: unset)."""
    shown = container.systemctl_show(unit, *props)
    return {prop: int(shown[prop]) / 1e6 for prop in props}


@contextlib.contextmanager
def loop_disk(size_mib: int = 32) -> Iterator[Path]:
    """A fresh ext4 image on a loop device, mounted under a temporary directory.

    The mount, the loop device and the directory are removed on the way out, also when
    the bench fails or is interrupted.
    """
    with tempfile.TemporaryDirectory(prefix="nodemedic-bench-disk-") as tmp:
        image, mnt = Path(tmp) / "disk.img", Path(tmp) / "mnt"
        mnt.mkdir()
        with image.open("wb") as f:
            f.truncate(size_mib * 1024 * 1024)
        _run("mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", str(image))
        device = _run("losetup", "--find", "--show", str(image)).strip()
        try:
            _run("mount", "-t", "ext4", device, str(mnt))
            try:
                yield mnt
            finally:
                with contextlib.suppress(RuntimeError):
                    _run("umount", str(mnt))
                if os.path.ismount(mnt):  # still busy: detach it now, gone once released
                    _run("umount", "--lazy", str(mnt))
        finally:
            _run("losetup", "--detach", device)


def _run(tool: str, *args: str) -> str:
    """Run a system tool (found on PATH or in /usr/sbin); its stdout.

    Raises:
        RuntimeError: naming the command and its stderr when it exits non-zero.
    """
    argv = [shutil.which(tool) or f"/usr/sbin/{tool}", *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
    return result.stdout


def only_probe(name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """A ``probes`` config with every probe off but ``name``, which has ``settings``."""
    probes: dict[str, Any] = {probe: {"enabled": False} for probe in PROBE_NAMES}
    probes[name] = dict(settings)
    return probes


def print_figures(figures: Mapping[str, Any]) -> None:
    """One line per latency series in ``figures`` (the :func:`percentiles` dicts)."""
    for name, stats in figures.items():
        if not isinstance(stats, dict):
            continue
        print(
            f"{name:44} n={stats['n']:<4.0f} p50 {stats['p50_ms']:8.2f} ms  "
            f"p90 {stats['p90_ms']:8.2f} ms  p99 {stats['p99_ms']:8.2f} ms  "
            f"max {stats['max_ms']:8.2f} ms"
        )
