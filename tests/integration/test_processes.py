"""The processes probe on the real /proc, against processes the test starts and stops.

Each test's children carry a unique argv[0] (``/bin/sleep`` run as ``nodemedic-pg-<token>-web``),
so groups match them and nothing else on a shared machine.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import ProcessesProbeConfig
from agent.probes.processes import ProcessesProbe
from tests.conftest import AgentProcess, http_json

Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def token() -> str:
    return f"nodemedic-pg-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def spawn(token: str) -> Iterator[Spawn]:
    """Start ``/bin/sleep`` children named ``<token>-<tag>``; all are killed at the end."""
    children: list[subprocess.Popen[bytes]] = []

    def start(tag: str, *, argv: list[str] | None = None) -> subprocess.Popen[bytes]:
        if argv is None:
            child = subprocess.Popen([f"{token}-{tag}", "600"], executable="/bin/sleep")
        else:
            child = subprocess.Popen(argv)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)


def make_probe(*groups: dict[str, Any], cgroup: Path = Path("/sys/fs/cgroup")) -> ProcessesProbe:
    config = ProcessesProbeConfig.model_validate({"groups": list(groups)})
    return ProcessesProbe(groups=config.groups, cgroup=cgroup)


async def read_group(probe: ProcessesProbe, group: str) -> dict[str, float]:
    return {
        sample.metric.removeprefix("nodemedic_process_group_"): sample.value
        for sample in await probe.sample()
        if sample.label_dict == {"group": group}
    }


async def wait_for(
    probe: ProcessesProbe, group: str, metric: str, value: float, within: float = 30.0
) -> dict[str, float]:
    """Sample until the group's metric has the value (children take a moment to exec)."""
    deadline = time.monotonic() + within
    values: dict[str, float] = {}
    while time.monotonic() < deadline:
        values = await read_group(probe, group)
        if values.get(metric) == value:
            return values
        await asyncio.sleep(0.05)
    pytest.fail(f"group {group}: {metric} never became {value}; last {values}")


def wait_state(pid: int, state: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        if stat[stat.rfind(b")") + 2 :].split()[0] == state.encode():
            return
        time.sleep(0.02)
    pytest.fail(f"pid {pid} never reached state {state}")


@pytest.mark.asyncio
async def test_children_are_counted_with_their_resources(token: str, spawn: Spawn) -> None:
    for _ in range(3):
        spawn("web")
    spawn("other")
    soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # the children inherit it
    probe = make_probe({"name": "web", "cmdline": f"^{token}-web "})
    try:
        values = await wait_for(probe, "web", "processes", 3)
    finally:
        probe.close()

    assert values["missing"] == 0
    assert values["threads"] == 3
    assert values["zombies"] == 0
    assert values["rss_bytes"] > 3 * 100_000  # sleep keeps a few hundred KiB resident
    assert values["fds"] >= 9  # stdin, stdout and stderr each
    assert values["fds_limit_ratio"] == pytest.approx(3 / soft_limit)
    assert 0 <= values["oldest_age_seconds"] < 120


@pytest.mark.asyncio
async def test_user_matches_the_real_effective_uid(token: str, spawn: Spawn) -> None:
    spawn("mine")
    pattern = f"^{token}-mine "
    probe = make_probe(
        {"name": "mine", "cmdline": pattern, "user": str(os.geteuid())},
        {"name": "theirs", "cmdline": pattern, "user": str(os.geteuid() + 1)},
    )
    try:
        await wait_for(probe, "mine", "processes", 1)
        assert (await read_group(probe, "theirs"))["processes"] == 0
    finally:
        probe.close()


@pytest.mark.asyncio
async def test_a_pidfile_group_sees_a_zombie_and_a_restart(
    token: str, spawn: Spawn, tmp_path: Path
) -> None:
    pidfile = tmp_path / "svc.pid"
    first = spawn("svc")
    pidfile.write_text(f"{first.pid}\n")
    probe = make_probe({"name": "svc", "pidfile": str(pidfile), "comm": "sleep"})
    try:
        values = await wait_for(probe, "svc", "processes", 1)
        assert values["restarts_total"] == 0

        # The service is killed and its supervisor starts a new one under a new PID.
        first.kill()
        first.wait(timeout=10)
        second = spawn("svc")
        pidfile.write_text(f"{second.pid}\n")
        values = await wait_for(probe, "svc", "restarts_total", 1)
        assert values["processes"] == 1

        # An exited child nobody has reaped yet is a zombie; its name survives.
        exited = spawn("z", argv=["/bin/sleep", "0"])
        wait_state(exited.pid, "Z")
        pidfile.write_text(f"{exited.pid}\n")
        values = await read_group(probe, "svc")
        assert (values["processes"], values["zombies"]) == (1, 1)
    finally:
        probe.close()


@pytest.mark.asyncio
async def test_a_group_replacing_a_worker_counts_a_restart(token: str, spawn: Spawn) -> None:
    workers = [spawn("pool") for _ in range(2)]
    probe = make_probe({"name": "pool", "cmdline": f"^{token}-pool "})
    try:
        await wait_for(probe, "pool", "processes", 2)
        workers[0].send_signal(signal.SIGTERM)
        workers[0].wait(timeout=10)
        await wait_for(probe, "pool", "processes", 1)
        spawn("pool")
        values = await wait_for(probe, "pool", "processes", 2)
        assert values["restarts_total"] == 1
    finally:
        probe.close()


@pytest.mark.asyncio
async def test_a_busy_child_uses_cpu(token: str, spawn: Spawn) -> None:
    spawn("busy", argv=[sys.executable, "-c", "while True: pass", f"{token}-busy"])
    probe = make_probe({"name": "busy", "cmdline": f"{token}-busy$"})
    deadline = time.monotonic() + 60
    cores = 0.0
    try:
        while cores <= 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            cores = (await read_group(probe, "busy")).get("cpu_cores", 0.0)
    finally:
        probe.close()
    assert cores > 0


def _cgroup_hierarchies() -> list[Path]:
    base = Path("/sys/fs/cgroup")
    found = [
        base / name for name in ("unified", "systemd") if (base / name / "cgroup.procs").exists()
    ]
    if not found and (base / "cgroup.procs").exists():
        found.append(base)  # pure cgroup v2
    return found


@pytest.mark.root
@pytest.mark.parametrize("hierarchy", _cgroup_hierarchies(), ids=lambda p: p.name)
@pytest.mark.asyncio
async def test_unit_membership_from_a_real_cgroup(
    token: str, spawn: Spawn, hierarchy: Path
) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test creates cgroups and must run as root (CI does)")
    root = hierarchy / token  # our own root, so the host's system.slice is left alone
    unit = root / "system.slice" / "demo.service"
    payload = unit / "payload"
    payload.mkdir(parents=True)
    children = [spawn("unit"), spawn("unit")]
    try:
        (unit / "cgroup.procs").write_text(f"{children[0].pid}\n")
        (payload / "cgroup.procs").write_text(f"{children[1].pid}\n")
        probe = make_probe({"name": "demo", "unit": "demo.service"}, cgroup=root)
        try:
            values = await read_group(probe, "demo")
            assert (values["processes"], values["missing"]) == (2, 0)
            for child in children:
                child.kill()
                child.wait(timeout=10)
            await wait_for(probe, "demo", "missing", 1)
        finally:
            probe.close()
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)
        for directory in (payload, unit, unit.parent, root):
            directory.rmdir()


def test_the_agent_fires_and_resolves_a_missing_group(
    token: str, spawn: Spawn, tmp_path: Path, agent_factory: Callable[..., AgentProcess]
) -> None:
    pidfile = tmp_path / "app.pid"
    settings = {
        "probes": {
            "processes": {
                "interval": "200ms",
                "groups": [
                    {"name": "app", "pidfile": str(pidfile), "comm": "sleep"},
                ],
            }
        },
        "rules": [
            {
                "name": "app-missing",
                "metric": "nodemedic_process_group_missing",
                "labels": {"group": "app"},
                "op": "==",
                "threshold": 1,
                "severity": "critical",
            },
        ],
    }
    agent = agent_factory(settings)
    agent.start()
    agent.wait_ready()

    def state() -> str:
        conditions = http_json(agent.url + "/v1/conditions")["conditions"]
        return next((c["state"] for c in conditions if c["name"] == "app-missing"), "none")

    def wait_state_is(expected: str) -> None:
        deadline = time.monotonic() + 30
        while state() != expected and time.monotonic() < deadline:
            time.sleep(0.1)
        assert state() == expected, agent.log()

    wait_state_is("firing")  # no pidfile yet: the group is missing
    child = spawn("app")
    pidfile.write_text(f"{child.pid}\n")
    wait_state_is("resolved")
    child.kill()
    child.wait(timeout=10)
    wait_state_is("firing")
