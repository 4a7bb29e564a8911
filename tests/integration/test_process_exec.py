"""The processes probe follows real processes that exec, rename themselves or reuse a PID.

The probe keeps each process's ``cmdline`` and ``stat`` open between runs; these tests
prove it still sees what a fresh read would: a process that ``exec``s into or out of a
group's pattern under the same PID, a process that rewrites its own command line in
place, and a PID handed to a new process. Each runs both with files held and with
fresh reads (the fallback when there is no room for held files). PID reuse is forced
in a PID namespace of our own, with its own procfs, by setting ``ns_last_pid`` (root).
"""

from __future__ import annotations

import os
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

from .test_processes import read_group, wait_for

# A child that waits for a line on stdin, then execs argv[1:] (its argv[0] given apart).
_EXEC_ON_LINE = "import os, sys; sys.stdin.readline(); os.execv(sys.argv[1], sys.argv[2:])"

# A child that rewrites its own command line in place, as setproctitle does, on a line.
_RETITLE_ON_LINE = """
import ctypes, sys
sys.stdin.readline()
# Where the kernel keeps the arguments: arg_start and arg_end, fields 48 and 49 of stat.
fields = open("/proc/self/stat", "rb").read().rsplit(b")", 1)[1].split()
start, end = int(fields[45]), int(fields[46])
title = sys.argv[1].encode()[: end - start - 1]
ctypes.memset(start, 0, end - start)
ctypes.memmove(start, title, len(title))
sys.stdout.write("done\\n")
sys.stdout.flush()
sys.stdin.readline()
"""


@pytest.fixture
def token() -> str:
    return f"nodemedic-px-{uuid.uuid4().hex[:10]}"


Start = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start() -> Iterator[Start]:
    """``subprocess.Popen`` whose children are killed and reaped at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def popen(argv: list[str], **options: Any) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(argv, **options)
        started.append(child)
        return child

    yield popen
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()


def make_probe(*groups: dict[str, Any], hold: bool, proc: Path = Path("/proc")) -> ProcessesProbe:
    config = ProcessesProbeConfig.model_validate({"groups": list(groups)})
    return ProcessesProbe(groups=config.groups, proc=proc, hold_files=hold)


def held_files_under(proc: Path) -> int:
    """How many of this process's descriptors are files below ``proc``."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        count += target.startswith(f"{proc}/")
    return count


def wait_cmdline(pid: int, prefix: bytes) -> None:
    """Wait until the process's command line starts with ``prefix`` (it has exec'd)."""
    deadline = time.monotonic() + 30
    while not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(prefix):
        assert time.monotonic() < deadline, f"pid {pid} never exec'd"
        time.sleep(0.02)


@pytest.mark.asyncio
@pytest.mark.parametrize("hold", [True, False], ids=["held", "fresh"])
async def test_a_process_that_execs_into_the_pattern_joins_and_one_that_execs_out_leaves(
    token: str, start: Start, hold: bool
) -> None:
    name = f"{token}-web"
    held_before = held_files_under(Path("/proc"))  # by probes of other tests, if any
    joining = start(
        [sys.executable, "-c", _EXEC_ON_LINE, "/bin/sleep", name, "600"], stdin=subprocess.PIPE
    )
    leaving = start(
        [name, "-c", _EXEC_ON_LINE, "/bin/sleep", "sleep", "600"],
        executable=sys.executable,
        stdin=subprocess.PIPE,
    )
    probe = make_probe(
        {"name": "web", "cmdline": f"^{name} "},
        {"name": "python", "cmdline": f"^{name} -c "},
        hold=hold,
    )
    try:
        await wait_for(probe, "web", "processes", 1)  # `leaving`, still python
        assert (await read_group(probe, "python"))["processes"] == 1
        if hold:
            assert held_files_under(Path("/proc")) > held_before
        for child in (joining, leaving):
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            child.stdin.close()
        # Same PIDs, same start times: only the command lines change.
        wait_cmdline(joining.pid, name.encode())
        wait_cmdline(leaving.pid, b"sleep")
        web = await read_group(probe, "web")
        assert web["processes"] == 1  # `joining` now, as sleep
        assert web["restarts_total"] == 1  # the group's PID changed
        assert (await read_group(probe, "python"))["processes"] == 0
    finally:
        probe.close()
    assert held_files_under(Path("/proc")) == held_before


@pytest.mark.asyncio
@pytest.mark.parametrize("hold", [True, False], ids=["held", "fresh"])
async def test_a_process_that_rewrites_its_command_line_in_place_is_seen_at_once(
    token: str, start: Start, hold: bool
) -> None:
    title = f"{token}: checkpointer"
    child = start(
        [sys.executable, "-c", _RETITLE_ON_LINE, title + " " * 40],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    probe = make_probe({"name": "ckpt", "cmdline": f"^{token}: checkpointer"}, hold=hold)
    try:
        assert (await read_group(probe, "ckpt"))["processes"] == 0
        child.stdin.write(b"go\n")
        child.stdin.flush()
        assert child.stdout.readline() == b"done\n"
        assert (await read_group(probe, "ckpt"))["processes"] == 1
    finally:
        probe.close()


class PidNamespace:
    """A PID namespace of our own, its procfs mounted at ``proc``, run by a small init.

    The init (PID 1 inside) starts ``/bin/sleep`` children at a chosen PID (by writing
    ``ns_last_pid``), kills and reaps them, on commands over a pipe.
    """

    _INIT = """
import subprocess, sys
subprocess.run(["mount", "-t", "proc", "proc", sys.argv[1]], check=True)
children = {}
print("ready", flush=True)
for line in sys.stdin:
    verb, pid, *name = line.split()
    if verb == "spawn":
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(int(pid) - 1))
        child = subprocess.Popen([name[0], "600"], executable="/bin/sleep")
        children[child.pid] = child
        print(child.pid, flush=True)
    else:
        child = children.pop(int(pid))
        child.kill()
        child.wait()
        print("killed", flush=True)
"""

    def __init__(self, proc: Path) -> None:
        self.proc = proc
        proc.mkdir()
        self._init = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-c", self._INIT, proc],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._ask("") == "ready"

    def spawn(self, pid: int, name: str) -> int:
        """Start a sleep named ``name`` at ``pid`` (inside); the PID it got."""
        return int(self._ask(f"spawn {pid} {name}\n"))

    def kill(self, pid: int) -> None:
        """Kill and reap the child at ``pid``."""
        assert self._ask(f"kill {pid}\n") == "killed"

    def close(self) -> None:
        """Stop the init (which takes every process inside with it) and unmount."""
        self._init.kill()
        self._init.wait(timeout=10)
        for pipe in (self._init.stdin, self._init.stdout):
            if pipe is not None:
                pipe.close()
        subprocess.run(["umount", "--lazy", self.proc], check=False)

    def _ask(self, command: str) -> str:
        assert self._init.stdin is not None
        assert self._init.stdout is not None
        if command:
            self._init.stdin.write(command)
            self._init.stdin.flush()
        return self._init.stdout.readline().strip()


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[PidNamespace]:
    if os.geteuid() != 0:
        pytest.skip("a PID namespace and a procfs mount need root")
    ns = PidNamespace(tmp_path / "proc")
    try:
        yield ns
    finally:
        ns.close()


@pytest.mark.root
@pytest.mark.asyncio
@pytest.mark.parametrize("hold", [True, False], ids=["held", "fresh"])
async def test_a_reused_pid_belongs_to_the_new_process(
    token: str, namespace: PidNamespace, hold: bool
) -> None:
    probe = make_probe(
        {"name": "old", "cmdline": f"^{token}-old "},
        {"name": "new", "cmdline": f"^{token}-new "},
        hold=hold,
        proc=namespace.proc,
    )
    try:
        pid = namespace.spawn(100, f"{token}-old")
        assert pid == 100
        await wait_for(probe, "old", "processes", 1)
        assert (await read_group(probe, "new"))["processes"] == 0
        if hold:
            assert held_files_under(namespace.proc) > 0
        namespace.kill(pid)
        # The new process may even share the old one's start time (same clock tick).
        assert namespace.spawn(100, f"{token}-new") == pid
        await wait_for(probe, "new", "processes", 1)
        assert (await read_group(probe, "old"))["processes"] == 0
    finally:
        probe.close()
    assert held_files_under(namespace.proc) == 0  # the run was over: closed at once
