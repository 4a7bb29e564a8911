"""``process.signal`` against real child processes of the test."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config import AgentSettings
from remediations.actions.base import ActionError
from remediations.actions.process import (
    ProcessSignalAction,
    ProcessSignalParams,
    SignalledProcess,
)
from remediations.actions.processes import ProcessMatch, ProcessRef, ProcessTable, parse_stat
from remediations.service import process_matches
from tests.actions import RecordingServices, step

IGNORES_TERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)
EXITS_ON_TERM = "import sys, time\nprint('ready', flush=True)\ntime.sleep(600)\n"


class Children:
    """Python children tagged with a unique token in their command line; killed at the end."""

    def __init__(self) -> None:
        self.token = f"nodemedic-test-{uuid.uuid4().hex}"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, code: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", code, self.token], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"  # its handlers are installed
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def children() -> Iterator[Children]:
    """Children killed and reaped when the test ends."""
    made = Children()
    yield made
    made.close()


def _params(**values: object) -> ProcessSignalParams:
    return ProcessSignalParams.model_validate(values)


def _running(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


@pytest.mark.asyncio
async def test_term_then_kill_after_the_grace(children: Children) -> None:
    polite = children.start(EXITS_ON_TERM)
    stubborn = children.start(IGNORES_TERM)
    params = _params(match={"cmdline": children.token}, grace="300ms")
    action = ProcessSignalAction()

    planned = await action.apply(step(params, dry_run=True))
    assert [p["pid"] for p in planned.details["processes"]] == sorted([polite.pid, stubborn.pid])
    assert planned.summary.startswith("would send SIGTERM to 2 processes")
    assert _running(polite)
    assert _running(stubborn)

    await action.precheck(step(params))
    result = await action.apply(step(params))
    assert result.ok
    assert sorted(result.details["signalled"]) == sorted([polite.pid, stubborn.pid])
    assert result.details["killed"] == [stubborn.pid]
    assert polite.wait(timeout=30) == -signal.SIGTERM
    assert stubborn.wait(timeout=30) == -signal.SIGKILL
    assert (await action.verify(step(params))).ok
    # A fresh action (after a restart) verifies by matching again.
    assert (await ProcessSignalAction().verify(step(params))).ok


@pytest.mark.asyncio
async def test_without_kill_a_survivor_fails_the_step(children: Children) -> None:
    stubborn = children.start(IGNORES_TERM)
    params = _params(match={"cmdline": children.token}, grace="200ms", kill=False)
    action = ProcessSignalAction()
    with pytest.raises(ActionError, match=rf"{stubborn.pid} \(python.*\) still run after SIGTERM"):
        await action.apply(step(params))
    assert _running(stubborn)
    verdict = await action.verify(step(params))
    assert not verdict.ok
    assert verdict.details["remaining"] == [stubborn.pid]


@pytest.mark.asyncio
async def test_a_group_is_the_processes_probe_group_of_that_name(children: Children) -> None:
    polite = children.start(EXITS_ON_TERM)
    other = children.start(EXITS_ON_TERM)
    groups = {
        "web": ProcessMatch(cmdline=rf"{children.token}$", user=str(os.getuid())),
        "db": ProcessMatch(cmdline="never-matches-anything-here"),
    }
    services = RecordingServices(process_groups=groups)
    # The group, narrowed by an extra criterion given beside it.
    params = _params(match={"group": "web", "pids": [polite.pid]}, grace="2s")
    result = await ProcessSignalAction().apply(step(params, services=services))
    assert result.details["signalled"] == [polite.pid]
    assert polite.wait(timeout=30) == -signal.SIGTERM
    assert _running(other)
    # The whole group.
    whole = await ProcessSignalAction().apply(
        step(_params(match={"group": "web"}, grace="2s"), dry_run=True, services=services)
    )
    assert [p["pid"] for p in whole.details["processes"]] == [other.pid]
    assert "group=web" in whole.summary


@pytest.mark.asyncio
async def test_an_unknown_group_is_refused_naming_the_configured_ones(children: Children) -> None:
    child = children.start(EXITS_ON_TERM)
    services = RecordingServices(process_groups={"web": ProcessMatch(comm="nginx")})
    params = _params(match={"group": "wbe"})
    with pytest.raises(ActionError, match=r"no process group named 'wbe'.*\(web\)"):
        await ProcessSignalAction().precheck(step(params, services=services))
    assert _running(child)


@pytest.mark.asyncio
@pytest.mark.parametrize("protected", ["pid1", "agent", "parent", "configured"])
async def test_protected_processes_are_refused(children: Children, protected: str) -> None:
    child = children.start(EXITS_ON_TERM)
    services = RecordingServices(protected_pids=frozenset({child.pid}))
    pid = {"pid1": 1, "agent": os.getpid(), "parent": os.getppid(), "configured": child.pid}
    params = _params(match={"pids": [pid[protected], child.pid]})
    action = ProcessSignalAction()
    for method in (action.precheck, action.apply):
        with pytest.raises(ActionError, match="includes protected processes") as err:
            await method(step(params, services=services))
        assert f"{pid[protected]} (" in str(err.value)
    assert _running(child)


@pytest.mark.asyncio
async def test_a_match_that_includes_the_agent_is_refused_whole(children: Children) -> None:
    child = children.start(EXITS_ON_TERM)
    # Both the test process and the child run this interpreter.
    params = _params(match={"comm": Path(sys.executable).name, "user": os.getuid()})
    with pytest.raises(ActionError, match=rf"{os.getpid()} \("):
        await ProcessSignalAction().apply(step(params))
    assert _running(child)


@pytest.mark.asyncio
async def test_too_many_processes_are_refused(children: Children) -> None:
    for _ in range(3):
        children.start(EXITS_ON_TERM)
    params = _params(match={"cmdline": children.token}, max_processes=2)
    with pytest.raises(ActionError, match="matches 3 processes, more than max_processes=2"):
        await ProcessSignalAction().precheck(step(params))
    assert all(_running(p) for p in children.procs)


@pytest.mark.asyncio
async def test_pidfile_and_user_matches(children: Children, tmp_path: Path) -> None:
    target = children.start(EXITS_ON_TERM)
    other = children.start(EXITS_ON_TERM)
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(f"{target.pid}\n")
    params = _params(match={"pidfile": str(pidfile), "user": os.getuid()}, grace="5s")
    result = await ProcessSignalAction().apply(step(params))
    assert result.details["signalled"] == [target.pid]
    assert target.wait(timeout=30) == -signal.SIGTERM
    assert _running(other)

    pidfile.write_text("garbage")
    with pytest.raises(ActionError, match=r"app.pid does not hold a PID: 'garbage'"):
        await ProcessSignalAction().precheck(step(params))
    with pytest.raises(ActionError, match=r"missing.pid: No such file"):
        await ProcessSignalAction().precheck(
            step(_params(match={"pidfile": str(tmp_path / "missing.pid")}))
        )
    with pytest.raises(ActionError, match="no user named 'no-such-user-x'"):
        await ProcessSignalAction().precheck(step(_params(match={"user": "no-such-user-x"})))


@pytest.mark.asyncio
async def test_no_matching_process_is_nothing_to_do() -> None:
    params = _params(match={"cmdline": f"absent-{uuid.uuid4().hex}"})
    result = await ProcessSignalAction().apply(step(params))
    assert result.ok
    assert result.details["signalled"] == []


@pytest.fixture
def unit_cgroup() -> Iterator[tuple[str, Path]]:
    """A cgroup named like a unit in the cgroup2 hierarchy, removed at the end."""
    if os.geteuid() != 0:
        pytest.fail("this test makes a cgroup and must run as root (CI does)")
    root = Path("/sys/fs/cgroup")
    hierarchy = root if (root / "cgroup.procs").exists() else root / "unified"
    unit = f"nodemedic-test-{uuid.uuid4().hex[:12]}.service"
    group = hierarchy / "test.slice" / unit
    group.mkdir(parents=True)
    try:
        yield unit, group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():  # after a failed test
            (hierarchy / "cgroup.procs").write_text(pid)
        group.rmdir()
        with contextlib.suppress(OSError):  # another test may still use the slice
            group.parent.rmdir()


@pytest.mark.root
@pytest.mark.asyncio
async def test_a_unit_match_signals_its_cgroup(
    children: Children, unit_cgroup: tuple[str, Path]
) -> None:
    unit, group = unit_cgroup
    inside = [children.start(EXITS_ON_TERM), children.start(IGNORES_TERM)]
    outside = children.start(EXITS_ON_TERM)
    for proc in inside:
        (group / "cgroup.procs").write_text(str(proc.pid))
    params = _params(match={"unit": unit}, grace="300ms")
    result = await ProcessSignalAction().apply(step(params))
    assert sorted(result.details["signalled"]) == sorted(p.pid for p in inside)
    assert result.details["killed"] == [inside[1].pid]
    assert [p.wait(timeout=30) for p in inside] == [-signal.SIGTERM, -signal.SIGKILL]
    assert _running(outside)

    gone = _params(match={"unit": "nodemedic-absent.service"})
    with pytest.raises(ActionError, match=r"unit nodemedic-absent\.service has no cgroup"):
        await ProcessSignalAction().precheck(step(gone))


def test_a_reused_pid_is_not_signalled(children: Children) -> None:
    """A PID whose start time differs from the listed one is someone else: left alone."""
    child = children.start(EXITS_ON_TERM)
    table = ProcessTable()
    fields = table.stat(child.pid)
    assert fields is not None
    listed = ProcessRef(pid=child.pid, starttime=fields.starttime - 1, name="python3")
    assert SignalledProcess.open(listed, table) is None
    assert not table.alive(listed)
    assert _running(child)

    same = SignalledProcess.open(ProcessRef(child.pid, fields.starttime, "python3"), table)
    assert same is not None
    try:
        assert same.send(signal.SIGTERM)
        assert child.wait(timeout=30) == -signal.SIGTERM
        assert not same.send(signal.SIGTERM)  # reaped: the pidfd refers to nothing now
    finally:
        same.close()


def test_stat_lines_with_awkward_names_parse() -> None:
    line = "4242 (a) (b c) S 1 4242 4242 0 -1 4194560 " + " ".join(["0"] * 12) + " 98765 rest"
    fields = parse_stat(line)
    assert fields.name == "a) (b c"
    assert fields.state == "S"
    assert fields.ppid == 1
    assert fields.starttime == 98765


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"match": {}}, "give at least one of group, comm, cmdline, pidfile, user, unit, pids"),
        (
            {"match": {"cmdline": "("}},
            "match.cmdline\n  Value error, invalid regular expression '('",
        ),
        ({"match": {"unit": "nginx"}}, "'nginx' is not a systemd unit name"),
        ({"match": {"pids": [0]}}, "PIDs are positive integers"),
        ({"match": {"pidfile": "run/x.pid"}}, "'run/x.pid' is not an absolute path"),
        ({"match": {"comm": "x", "exe": "/bin/x"}}, "match.exe\n  Extra inputs are not permitted"),
        ({"match": {"comm": "x"}, "signal": "USR1"}, "signal\n  Input should be 'TERM'"),
        ({"match": {"comm": "x"}, "grace": "-1s"}, "grace\n  Value error, invalid duration"),
        ({"match": {"comm": "x"}, "grace": "soon"}, "invalid duration 'soon'"),
        ({"match": {"comm": "x"}, "max_processes": 0}, "max_processes\n  Input should be greater"),
        ({"comm": "x"}, "match\n  Field required"),
    ],
)
def test_bad_params_say_what_is_wrong(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        ProcessSignalParams.model_validate(values)
    assert message in str(err.value)


def test_match_describes_itself() -> None:
    match = ProcessMatch(comm="nginx", user="www-data")
    assert match.describe() == "comm=nginx user=www-data"


@pytest.mark.asyncio
async def test_verify_after_a_restart_counts_a_vanished_pidfile_as_done(tmp_path: Path) -> None:
    params = _params(match={"pidfile": str(tmp_path / "gone.pid")})
    verdict = await ProcessSignalAction().verify(step(params))
    assert verdict.ok
    assert "gone.pid: No such file" in verdict.summary


def test_the_probe_groups_of_a_configuration_become_matches() -> None:
    """Every kind of group a config may hold, as the runtime hands them to the action."""
    settings = AgentSettings.model_validate(
        {
            "probes": {
                "processes": {
                    "groups": [
                        {"name": "app", "pidfile": "/run/app.pid", "comm": "sleep"},
                        {"name": "web", "cmdline": "nginx: worker", "user": "www-data"},
                        {"name": "session", "unit": "user.slice/user@1000.service"},
                    ]
                }
            }
        }
    )
    matches = process_matches(settings.probes.processes.groups)
    assert matches == {
        "app": ProcessMatch(pidfile="/run/app.pid", comm="sleep"),
        "web": ProcessMatch(cmdline="nginx: worker", user="www-data"),
        "session": ProcessMatch(unit="user.slice/user@1000.service"),
    }
