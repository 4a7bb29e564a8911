"""The agent's lifecycle in-process: hung probes, sd_notify and the watchdog.

The probes here are real :class:`BlockingProbe` subclasses (or, for the stuck loop, a
minimal object satisfying the ``Probe`` protocol) so a hang can be switched on and off;
sd_notify goes over a real unix datagram socket named by ``NOTIFY_SOCKET``, exactly as
systemd provides it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from agent.config import AgentSettings, RuleConfig
from agent.errors import ProbeError
from agent.model import ConditionState, Sample
from agent.probes.base import BlockingProbe, Probe, ProbeEvent, ProbeUpdate
from agent.probes.memory import MemoryProbe
from agent.runtime import Agent
from agent.store import Store

PROBE_FAILING = RuleConfig.model_validate(
    {"name": "probe-failing", "metric": "nodemedic_probe_up", "op": "<", "threshold": 1}
)


class GatedLoadProbe(BlockingProbe):
    """A load probe whose reads block while its gate is closed (a dead NFS mount, say)."""

    def __init__(self, gate: threading.Event) -> None:
        super().__init__(name="load", interval=0.1, timeout=0.2)
        self.gate = gate

    def collect(self) -> list[Sample]:
        """Wait for the gate (at most 30 s so a broken test cannot hang forever)."""
        self.gate.wait(30)
        return [Sample.of("nodemedic_load1", 0.25)]


class StuckProbe:
    """A buggy probe whose coroutine ignores cancellation until released: its loop stalls."""

    name = "fds"
    interval = 0.1
    timeout = 0.1

    def __init__(self) -> None:
        self.stuck = False
        self.release = asyncio.Event()

    async def sample(self) -> Sequence[Sample]:
        """Return at once until ``stuck`` is set, then hang through cancellations."""
        if self.stuck:
            while not self.release.is_set():
                try:
                    await self.release.wait()
                except asyncio.CancelledError:
                    continue
        return [Sample.of("nodemedic_fds_used_ratio", 0.1)]

    def close(self) -> None:
        """Nothing to release."""


def _settings(tmp_path: Path) -> AgentSettings:
    return AgentSettings(
        state_dir=tmp_path / "state",
        api={"listen": "127.0.0.1:0"},
        rules=(PROBE_FAILING,),
    )


async def _until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10.0
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.02)


def _types(agent: Agent) -> list[str]:
    return [e.type for e in agent.events(type=None, since=0, limit=1000)]


@pytest.mark.asyncio
async def test_a_hung_probe_fails_alone_and_recovers(tmp_path: Path) -> None:
    gate = threading.Event()
    probes: list[Probe] = [GatedLoadProbe(gate), MemoryProbe(interval=0.1, timeout=1.0)]
    agent = Agent(_settings(tmp_path), probes=probes)
    task = asyncio.create_task(agent.run())
    try:
        await _until(lambda: agent.readiness()[0])
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{agent.api_url}/readyz") as resp,
        ):
            assert resp.status == 200

        statuses = {s.name: s for s in agent.probe_statuses()}
        memory_runs = statuses["memory"].runs
        await asyncio.sleep(1.0)
        statuses = {s.name: s for s in agent.probe_statuses()}
        assert statuses["memory"].runs >= memory_runs + 5, "the hung probe stalled another"
        assert statuses["memory"].up
        assert not statuses["load"].up
        assert statuses["load"].error is not None
        assert "hung" in statuses["load"].error or "timed out" in statuses["load"].error
        assert _types(agent).count("io.nodemedic.probe.failed") == 1
        failing = [c for c in agent.conditions() if c.labels == (("probe", "load"),)]
        assert failing[0].state is ConditionState.FIRING
        assert any(s.metric == "nodemedic_memory_used_ratio" for s in agent.latest_samples())

        gate.set()
        await _until(lambda: {s.name: s for s in agent.probe_statuses()}["load"].up)
        await _until(
            lambda: (
                next(c for c in agent.conditions() if c.labels == (("probe", "load"),)).state
                is ConditionState.RESOLVED
            )
        )
        assert "io.nodemedic.probe.recovered" in _types(agent)
    finally:
        gate.set()
        agent.request_stop()
        await asyncio.wait_for(task, 5)


class NotifySocket:
    """A unix datagram socket standing where systemd's notification socket would be.

    It reads continuously from the event loop, as systemd does: a notification socket
    nobody reads fills its small queue and blocks the sender.
    """

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def start(self) -> None:
        """Begin reading on the running loop."""
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._read)

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            self.messages.extend(data.decode().splitlines())

    def close(self) -> None:
        """Stop reading and close."""
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


@pytest_asyncio.fixture
async def notify_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[NotifySocket]:
    """NOTIFY_SOCKET and a 0.2 s WatchdogSec for this process, as systemd would set them."""
    path = tmp_path / "notify.sock"
    listener = NotifySocket(path)
    listener.start()
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    yield listener
    listener.close()


@pytest.mark.asyncio
async def test_sd_notify_ready_status_watchdog_and_stopping(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    stuck = StuckProbe()
    agent = Agent(_settings(tmp_path), probes=[stuck, MemoryProbe(interval=0.1, timeout=1.0)])
    task = asyncio.create_task(agent.run())
    try:
        await _until(lambda: "READY=1" in notify_socket.messages)
        await asyncio.sleep(0.6)
        messages = notify_socket.messages
        assert messages.count("WATCHDOG=1") >= 3
        status = [m for m in messages if m.startswith("STATUS=")]
        assert status
        assert status[-1].startswith("STATUS=ready: 2 probes, 0 firing")
        assert "STOPPING=1" not in messages

        # The fds probe loop stops making progress: after its allowance
        # (2 intervals + timeout + 1 s) the pings stop, so systemd would restart us.
        stuck.stuck = True
        await asyncio.sleep(2.0)
        notify_socket.messages.clear()
        await asyncio.sleep(0.6)
        assert "WATCHDOG=1" not in notify_socket.messages

        stuck.release.set()
        await asyncio.sleep(0.6)
        assert "WATCHDOG=1" in notify_socket.messages
    finally:
        stuck.release.set()
        agent.request_stop()
        await asyncio.wait_for(task, 5)
    await asyncio.sleep(0.1)
    assert notify_socket.messages[-1] == "STOPPING=1"


@pytest.mark.asyncio
async def test_stop_is_prompt_while_a_probe_thread_hangs(tmp_path: Path) -> None:
    gate = threading.Event()
    agent = Agent(_settings(tmp_path), probes=[GatedLoadProbe(gate)])
    task = asyncio.create_task(agent.run())
    try:
        await _until(lambda: agent.readiness()[0])
        started = time.monotonic()
        agent.request_stop()
        await asyncio.wait_for(task, 5)
        assert time.monotonic() - started < 3.0
    finally:
        gate.set()
    store = Store.open(tmp_path / "state" / "nodemedic.db")
    try:
        events = store.events(limit=10)
    finally:
        store.close()
    assert [e.type for e in events][-1] == "io.nodemedic.agent.stopping"
    assert "io.nodemedic.probe.failed" in [e.type for e in events]


class ScriptedPushProbe:
    """A push probe fed by the test: each update put on its queue is yielded at once.

    Putting an exception makes ``watch`` raise it, as a probe whose source vanished does.
    """

    name = "load"
    interval = 5.0
    timeout = 1.0

    def __init__(self) -> None:
        self.queue: asyncio.Queue[ProbeUpdate | Exception] = asyncio.Queue()
        self.watches = 0

    async def watch(self) -> AsyncIterator[ProbeUpdate]:
        """Yield what the test queues; raise what the test queues."""
        self.watches += 1
        while True:
            item = await self.queue.get()
            if isinstance(item, Exception):
                raise item
            yield item

    def close(self) -> None:
        """Nothing to release."""


@pytest.mark.asyncio
async def test_a_push_probe_drives_rules_events_and_recovers_from_a_lost_source(
    tmp_path: Path,
) -> None:
    high_load = RuleConfig.model_validate(
        {"name": "load-high", "metric": "nodemedic_load1", "op": ">", "threshold": 4}
    )
    settings = _settings(tmp_path).model_copy(update={"rules": (PROBE_FAILING, high_load)})
    probe = ScriptedPushProbe()
    agent = Agent(settings, probes=[probe])
    task = asyncio.create_task(agent.run())

    def state(rule: str) -> ConditionState | None:
        found = [c.state for c in agent.conditions() if c.rule == rule]
        return found[0] if found else None

    try:
        await probe.queue.put(ProbeUpdate(samples=[Sample.of("nodemedic_load1", 1.0)]))
        await _until(lambda: agent.readiness()[0])

        await probe.queue.put(
            ProbeUpdate(
                samples=[Sample.of("nodemedic_load1", 9.0)],
                events=[ProbeEvent("io.nodemedic.kernel.oom_kill", "kworker", {"pid": 7})],
            )
        )
        await _until(lambda: state("load-high") is ConditionState.FIRING)
        oom = agent.events(type="io.nodemedic.kernel.oom_kill", since=0, limit=10)
        assert [(e.subject, dict(e.data)) for e in oom] == [("kworker", {"pid": 7})]

        # The source is gone: the probe shows down, its condition is kept, not resolved.
        await probe.queue.put(ProbeUpdate(error="probe load: the bus went away"))
        await _until(lambda: not {s.name: s for s in agent.probe_statuses()}["load"].up)
        assert state("load-high") is ConditionState.FIRING
        assert state("probe-failing") is ConditionState.FIRING

        # A watch that raises is watched again; its next update brings the probe back.
        await probe.queue.put(ProbeError("probe load: connection reset"))
        await _until(lambda: probe.watches == 2)
        await probe.queue.put(ProbeUpdate(samples=[Sample.of("nodemedic_load1", 0.5)]))
        await _until(lambda: state("load-high") is ConditionState.RESOLVED)
        assert {s.name: s for s in agent.probe_statuses()}["load"].up
        assert state("probe-failing") is ConditionState.RESOLVED
    finally:
        agent.request_stop()
        await asyncio.wait_for(task, 5)


@pytest.mark.asyncio
async def test_a_push_probe_condition_fires_when_its_for_elapses_without_a_new_update(
    tmp_path: Path,
) -> None:
    """A push probe is silent while nothing changes: its condition must not wait for it."""
    held = RuleConfig.model_validate(
        {"name": "load-high", "metric": "nodemedic_load1", "op": ">", "threshold": 4, "for": "1s"}
    )
    settings = _settings(tmp_path).model_copy(update={"rules": (held,)})
    probe = ScriptedPushProbe()  # its resync interval (5 s) is far beyond the wait below
    agent = Agent(settings, probes=[probe])
    task = asyncio.create_task(agent.run())
    try:
        await probe.queue.put(ProbeUpdate(samples=[Sample.of("nodemedic_load1", 9.0)]))
        await _until(lambda: [c.state for c in agent.conditions()] == [ConditionState.PENDING])
        await _until(lambda: [c.state for c in agent.conditions()] == [ConditionState.FIRING])
        firing = agent.events(type="io.nodemedic.condition.firing", since=0, limit=10)
        assert len(firing) == 1
        assert probe.queue.empty()  # no update came after the breach: time alone fired it
    finally:
        agent.request_stop()
        await asyncio.wait_for(task, 5)
