"""HeldProcFiles and the open-files limit, on the real /proc with processes the test starts."""

from __future__ import annotations

import logging
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.probes.proc_files import HELD_FD_FLOOR, HeldProcFiles, raise_open_files_limit
from agent.probes.procfs_reader import is_procfs, read_bytes

from .proc_tree import FakeProcess, write_process


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    children = [subprocess.Popen(["sleep", "600"]) for _ in range(3)]
    yield children
    for child in children:
        child.kill()
        child.wait(timeout=10)


@pytest.fixture
def files() -> Iterator[HeldProcFiles]:
    held = HeldProcFiles("/proc", capacity=100)
    yield held
    held.close()


def fresh(pid: int, name: str) -> bytes:
    return read_bytes(f"/proc/{pid}/{name}")


def identity(stat: bytes) -> tuple[bytes, bytes]:
    """The PID and start time from raw ``stat`` content."""
    return stat.split()[0], stat[stat.rfind(b")") + 2 :].split()[19]


def open_fds_at_or_above_floor() -> list[int]:
    return [int(fd.name) for fd in Path("/proc/self/fd").iterdir() if int(fd.name) >= HELD_FD_FLOOR]


def test_held_files_read_what_a_fresh_read_does_and_keep_their_numbers_high(
    files: HeldProcFiles, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    pids = [child.pid for child in sleepers]
    for _ in range(2):  # opened, then read again through the held files
        cmdlines = files.read_all(pids, "cmdline")
        assert cmdlines == {pid: fresh(pid, "cmdline") for pid in pids}
        stats = files.read_all(pids, "stat")
        assert stats.keys() == set(pids)
        # The process and its start time: fields that cannot change between the reads.
        assert all(identity(stats[pid]) == identity(fresh(pid, "stat")) for pid in pids)
    assert files.held == 6
    assert len(open_fds_at_or_above_floor()) >= 6


def test_a_reaped_process_is_left_out_and_its_files_closed(
    files: HeldProcFiles, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    pids = [child.pid for child in sleepers]
    files.read_all(pids, "cmdline")
    sleepers[0].kill()
    sleepers[0].wait(timeout=10)

    assert files.read_all(pids, "cmdline").keys() == set(pids[1:])
    assert files.held == 2


def test_sweep_closes_the_files_of_processes_a_run_did_not_read(
    files: HeldProcFiles, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    pids = [child.pid for child in sleepers]
    files.read_all(pids, "cmdline")
    files.sweep()
    files.read_all(pids[:1], "stat")
    files.sweep()

    assert files.held == 2  # the stat and cmdline of the one process read since then
    files.close()
    assert files.held == 0
    assert open_fds_at_or_above_floor() == []


def test_past_its_capacity_files_are_read_afresh(
    sleepers: list[subprocess.Popen[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    files = HeldProcFiles("/proc", capacity=1)
    pids = [child.pid for child in sleepers]
    try:
        with caplog.at_level(logging.INFO):
            for _ in range(3):
                assert files.read_all(pids, "cmdline") == {p: fresh(p, "cmdline") for p in pids}
        assert files.held == 1
    finally:
        files.close()
    said = [r.getMessage() for r in caplog.records if "no room" in r.getMessage()]
    assert len(said) == 1  # once, not every run


def test_without_room_above_the_floor_every_read_is_fresh(
    sleepers: list[subprocess.Popen[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    files = HeldProcFiles("/proc", capacity=100)
    pids = [child.pid for child in sleepers]
    resource.setrlimit(resource.RLIMIT_NOFILE, (HELD_FD_FLOOR, hard))
    try:
        with caplog.at_level(logging.INFO):
            assert files.read_all(pids, "cmdline") == {p: fresh(p, "cmdline") for p in pids}
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        files.close()
    assert files.held == 0
    assert any("no room" in r.getMessage() for r in caplog.records)


def test_the_open_files_limit_is_raised_towards_the_hard_limit_and_never_lowered() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"hard open-files limit {hard} leaves nothing to raise")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        assert raise_open_files_limit(2048) == 2048
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 2048
        assert raise_open_files_limit(1500) == 2048
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 2048
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_only_a_procfs_mount_counts_as_procfs(tmp_path: Path) -> None:
    fixture = tmp_path / "proc"
    write_process(fixture, FakeProcess(1, "init"))
    (fixture / "self").symlink_to("1")

    assert is_procfs(Path("/proc"))
    assert not is_procfs(fixture)
    assert not is_procfs(tmp_path / "missing")
