"""ProcessesProbe against fixture procfs and cgroup trees."""

from __future__ import annotations

import logging
import os
import pwd
import resource
from pathlib import Path
from typing import Any

import pytest

from agent.config import ProcessesProbeConfig
from agent.errors import ProbeError
from agent.probes.processes import CLOCK_TICKS, FD_REFRESH, PAGE_BYTES, ProcessesProbe
from agent.probes.procfs_reader import ProcReader

from .fakes import Closing, assert_catalog_conformant, by_series
from .proc_tree import FakeProcess, own_uid, remove_process, write_process, write_uptime


def make_probe(proc: Path, *groups: dict[str, Any], cgroup: Path | None = None) -> ProcessesProbe:
    config = ProcessesProbeConfig.model_validate({"groups": list(groups)})
    return ProcessesProbe(groups=config.groups, proc=proc, cgroup=cgroup or proc / "no-cgroup")


async def read_group(probe: ProcessesProbe, group: str) -> dict[str, float]:
    """One run; the named group's series keyed by metric name without the prefix."""
    samples = await probe.sample()
    assert_catalog_conformant("processes", samples)
    return {
        metric.removeprefix("nodemedic_process_group_"): value
        for (metric, labels), value in by_series(samples).items()
        if dict(labels) == {"group": group}
    }


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    write_uptime(root, 1000.0)
    return root


@pytest.mark.asyncio
async def test_a_comm_group_sums_its_members_and_leaves_others_out(
    proc: Path, closing: Closing
) -> None:
    start = 200 * CLOCK_TICKS  # 200 s after boot: 800 s old at uptime 1000
    write_process(proc, FakeProcess(1, "systemd", ("/sbin/init",)))
    for pid, threads in ((10, 4), (11, 1)):
        write_process(
            proc,
            FakeProcess(
                pid,
                "nginx",
                ("nginx: worker",),
                threads=threads,
                start=start + pid,
                rss_pages=100,
                fds=8,
                nofile=10,
            ),
        )
    write_process(proc, FakeProcess(12, "nginx", state="Z", start=start + 50, fds=0))
    probe = closing(make_probe(proc, {"name": "web", "comm": "nginx"}))

    values = await read_group(probe, "web")

    assert values == {
        "processes": 3,
        "missing": 0,
        "rss_bytes": 200 * PAGE_BYTES,
        "threads": 6,
        "zombies": 1,
        "restarts_total": 0,
        "fds": 16,
        "fds_limit_ratio": pytest.approx(0.8),
        "oldest_age_seconds": pytest.approx(1000 - (start + 10) / CLOCK_TICKS),
    }  # no cpu_cores yet: a rate needs two runs


@pytest.mark.asyncio
async def test_cpu_is_the_tick_delta_over_the_uptime_delta(proc: Path, closing: Closing) -> None:
    write_process(proc, FakeProcess(10, "worker", utime=500, stime=100, start=10))
    probe = closing(make_probe(proc, {"name": "w", "comm": "worker"}))
    await probe.sample()

    write_uptime(proc, 1010.0)
    busy = 15 * CLOCK_TICKS  # 1.5 cores over 10 s
    write_process(proc, FakeProcess(10, "worker", utime=500 + busy, stime=100, start=10))
    # A process born during the interval brings all its time; it ran half a core.
    born = 1005 * CLOCK_TICKS
    write_process(proc, FakeProcess(11, "worker", utime=5 * CLOCK_TICKS // 2, start=born))
    values = await read_group(probe, "w")

    assert values["cpu_cores"] == pytest.approx(1.5 + 0.25)


@pytest.mark.asyncio
async def test_names_with_spaces_and_parentheses_match_exactly(
    proc: Path, closing: Closing
) -> None:
    write_process(proc, FakeProcess(20, "(sd-pam)"))
    write_process(proc, FakeProcess(21, "a) b (c"))
    probe = closing(
        make_probe(proc, {"name": "pam", "comm": "(sd-pam)"}, {"name": "odd", "comm": "a) b (c"})
    )

    assert (await read_group(probe, "pam"))["processes"] == 1
    assert (await read_group(probe, "odd"))["processes"] == 1


@pytest.mark.asyncio
async def test_a_cmdline_regex_searches_the_arguments_joined_by_spaces(
    proc: Path, closing: Closing
) -> None:
    write_process(proc, FakeProcess(30, "python3", ("python3", "-m", "app.server", "--port=8080")))
    write_process(proc, FakeProcess(31, "python3", ("python3", "-m", "app.worker")))
    write_process(proc, FakeProcess(2, "kthreadd"))  # a kernel thread: empty cmdline
    probe = closing(
        make_probe(
            proc, {"name": "api", "cmdline": r"-m app\.server( |$)"}, {"name": "k", "cmdline": "^$"}
        )
    )

    assert (await read_group(probe, "api"))["processes"] == 1
    assert (await read_group(probe, "k"))["processes"] == 1


@pytest.mark.asyncio
async def test_only_the_files_a_group_needs_are_read(proc: Path, closing: Closing) -> None:
    # Directories where files should be: reading one would fail the whole run.
    for pid, comm in ((40, "cron"), (41, "bash")):
        directory = write_process(proc, FakeProcess(pid, comm, ("x",)))
        (directory / "cmdline").unlink()
        (directory / "cmdline").mkdir()
        (directory / "status").mkdir()
    write_process(proc, FakeProcess(42, "sshd", ("sshd: admin",)))
    probe = closing(
        make_probe(
            proc,
            {"name": "cron", "comm": "cron"},  # stat only: no cmdline, no status
            {"name": "sshd", "comm": "sshd", "cmdline": "admin"},  # cmdline of sshd only
            {"name": "mine", "user": str(own_uid())},  # the owner of /proc/PID, no status
        )
    )

    samples = by_series(await probe.sample())

    assert samples["nodemedic_process_group_processes", (("group", "cron"),)] == 1
    assert samples["nodemedic_process_group_processes", (("group", "sshd"),)] == 1
    assert samples["nodemedic_process_group_processes", (("group", "mine"),)] == 3


@pytest.mark.asyncio
async def test_user_matches_the_effective_uid_by_number_or_name(
    proc: Path, closing: Closing, caplog: pytest.LogCaptureFixture
) -> None:
    write_process(proc, FakeProcess(50, "app"))
    name = pwd.getpwuid(own_uid()).pw_name
    probe = closing(
        make_probe(
            proc,
            {"name": "by-number", "comm": "app", "user": str(own_uid())},
            {"name": "by-name", "user": name},
            {"name": "other", "user": str(own_uid() + 1)},
            {"name": "nobody-here", "user": "no-such-user-nodemedic"},
        )
    )

    with caplog.at_level(logging.INFO, logger="agent.probes.processes"):
        first = by_series(await probe.sample())
        await probe.sample()

    def count(group: str) -> float:
        return first["nodemedic_process_group_processes", (("group", group),)]

    assert (count("by-number"), count("by-name"), count("other")) == (1, 1, 0)
    assert count("nobody-here") == 0
    warned = [m for m in caplog.messages if "no-such-user-nodemedic" in m]
    assert warned == [
        "processes: group nobody-here: unknown user 'no-such-user-nodemedic'; "
        "the group matches nothing"
    ]  # once, not every run


@pytest.mark.asyncio
async def test_pidfile_groups_follow_the_file(
    proc: Path, tmp_path: Path, closing: Closing, caplog: pytest.LogCaptureFixture
) -> None:
    write_process(proc, FakeProcess(60, "postgres", rss_pages=10))
    write_process(proc, FakeProcess(61, "bash"))
    pidfile = tmp_path / "db.pid"
    probe = closing(
        make_probe(
            proc,
            {"name": "db", "pidfile": str(pidfile), "min_count": 1},
            {"name": "db-guarded", "pidfile": str(pidfile), "comm": "postgres"},
        )
    )

    absent = await read_group(probe, "db")  # no pidfile: not running, not an error
    pidfile.write_text("60\n", encoding="utf-8")
    running = await read_group(probe, "db")
    pidfile.write_text("61\n", encoding="utf-8")  # a stale file naming a reused PID
    guarded = await read_group(probe, "db-guarded")
    pidfile.write_text("garbage", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="agent.probes.processes"):
        broken = await read_group(probe, "db")

    assert (absent["processes"], absent["missing"]) == (0, 1)
    assert (running["processes"], running["missing"], running["rss_bytes"]) == (
        1,
        0,
        10 * PAGE_BYTES,
    )
    assert guarded["processes"] == 0
    assert broken["processes"] == 0
    assert f"processes: group db: pidfile {pidfile} does not hold a PID: b'garbage'" in (
        caplog.messages
    )


@pytest.mark.parametrize("hierarchy", ["", "unified/", "systemd/"], ids=["v2", "hybrid", "v1"])
@pytest.mark.asyncio
async def test_unit_membership_comes_from_its_cgroup_and_sub_cgroups(
    proc: Path, tmp_path: Path, closing: Closing, hierarchy: str
) -> None:
    cgroup = tmp_path / "cgroup"
    unit = cgroup / f"{hierarchy}system.slice/nginx.service"
    (unit / "payload").mkdir(parents=True)
    (unit / "cgroup.procs").write_text("70\n71\n", encoding="utf-8")
    (unit / "payload" / "cgroup.procs").write_text("72\n70\n", encoding="utf-8")
    user = cgroup / f"{hierarchy}user.slice/user@1000.service"
    user.mkdir(parents=True)
    (user / "cgroup.procs").write_text("73\n", encoding="utf-8")
    for pid in (70, 71, 72, 73):
        write_process(proc, FakeProcess(pid, "nginx"))
    # 71 exited after the cgroup was read: skipped.
    remove_process(proc, 71)
    probe = closing(
        make_probe(
            proc,
            {"name": "nginx", "unit": "nginx.service"},
            {"name": "session", "unit": "user.slice/user@1000.service"},
            {"name": "stopped", "unit": "redis.service"},
            cgroup=cgroup,
        )
    )

    assert (await read_group(probe, "nginx"))["processes"] == 2
    assert (await read_group(probe, "session"))["processes"] == 1
    stopped = await read_group(probe, "stopped")
    assert (stopped["processes"], stopped["missing"]) == (0, 1)


@pytest.mark.asyncio
async def test_restarts_count_runs_where_a_group_that_had_members_gains_new_pids(
    proc: Path, closing: Closing
) -> None:
    probe = closing(make_probe(proc, {"name": "svc", "comm": "svc"}))
    assert (await read_group(probe, "svc"))["restarts_total"] == 0  # never had members

    write_process(proc, FakeProcess(80, "svc", start=500))
    assert (await read_group(probe, "svc"))["restarts_total"] == 0  # first start
    assert (await read_group(probe, "svc"))["restarts_total"] == 0  # unchanged

    remove_process(proc, 80)
    write_process(proc, FakeProcess(81, "svc", start=600))
    assert (await read_group(probe, "svc"))["restarts_total"] == 1  # respawned between runs

    remove_process(proc, 81)
    assert (await read_group(probe, "svc"))["processes"] == 0  # crashed...
    write_process(proc, FakeProcess(81, "svc", start=700))  # ...and back, same PID reused
    assert (await read_group(probe, "svc"))["restarts_total"] == 2


@pytest.mark.asyncio
async def test_limits_drive_missing_and_rss_over_limit(proc: Path, closing: Closing) -> None:
    write_process(proc, FakeProcess(90, "web", rss_pages=300))
    write_process(proc, FakeProcess(91, "web", rss_pages=300, nofile="unlimited"))
    probe = closing(
        make_probe(
            proc,
            {"name": "web", "comm": "web", "min_count": 3, "max_rss_bytes": 500 * PAGE_BYTES},
            {"name": "web-loose", "comm": "web", "max_rss_bytes": "1GiB"},
        )
    )

    strict = await read_group(probe, "web")
    loose = await read_group(probe, "web-loose")

    assert (strict["missing"], strict["rss_over_limit"]) == (1, 1)
    assert (loose["missing"], loose["rss_over_limit"]) == (0, 0)
    assert strict["fds_limit_ratio"] == pytest.approx(3 / 1024)  # unlimited adds no ratio


@pytest.mark.asyncio
async def test_a_process_vanishing_mid_run_is_skipped(proc: Path, closing: Closing) -> None:
    write_process(proc, FakeProcess(100, "app"))
    (proc / "101").mkdir()  # listed, then gone before its stat could be read
    probe = closing(make_probe(proc, {"name": "app", "comm": "app"}))

    assert (await read_group(probe, "app"))["processes"] == 1


@pytest.mark.asyncio
async def test_no_groups_reads_nothing(tmp_path: Path, closing: Closing) -> None:
    probe = closing(make_probe(tmp_path / "absent"))

    assert await probe.sample() == []


@pytest.mark.asyncio
async def test_unreadable_procfs_is_a_probe_error(tmp_path: Path, closing: Closing) -> None:
    probe = closing(make_probe(tmp_path / "absent", {"name": "a", "comm": "a"}))

    with pytest.raises(ProbeError, match=r"^probe processes: cannot read .*/absent/uptime"):
        await probe.sample()


def test_the_live_procfs_shortcuts_agree_with_the_files() -> None:
    """On the real /proc, fd counts come from stat(2) and limits from prlimit(2)."""
    live = ProcReader(Path("/proc"))
    own = os.getpid()

    listed = len(os.listdir(f"/proc/{own}/fd"))  # noqa: PTH208 - listdir's own fd is listed too
    assert live.fd_count(own) in (listed - 1, listed)
    assert live.nofile_limit(own) == resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@pytest.mark.asyncio
async def test_descriptor_counts_are_read_again_only_after_the_refresh_period(
    proc: Path, closing: Closing
) -> None:
    now = [100.0]
    write_process(proc, FakeProcess(10, "worker", start=10, fds=4, nofile=100))
    config = ProcessesProbeConfig.model_validate({"groups": [{"name": "w", "comm": "worker"}]})
    probe = closing(
        ProcessesProbe(
            groups=config.groups, proc=proc, cgroup=proc / "no-cgroup", clock=lambda: now[0]
        )
    )
    first = await read_group(probe, "w")

    write_process(proc, FakeProcess(10, "worker", start=10, fds=40, nofile=100))
    write_process(proc, FakeProcess(11, "worker", start=20, fds=2, nofile=100))
    now[0] += FD_REFRESH / 2
    within = await read_group(probe, "w")
    now[0] += FD_REFRESH / 2
    after = await read_group(probe, "w")

    assert first["fds"] == 4
    assert within["fds"] == 4 + 2  # the known member's count is reused, the new one read
    assert after["fds"] == 40 + 2
    assert after["fds_limit_ratio"] == pytest.approx(0.4)
