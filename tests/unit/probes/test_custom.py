"""Custom checks against real plugins: tmp executable shell and Python scripts with each
exit code, perfdata, huge output, one that hangs and one that forks a child that hangs."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from agent.config import CustomProbeConfig
from agent.probes.base import ProbeEvent, ProbeUpdate
from agent.probes.custom import CustomCheck, CustomProbe

from .fakes import assert_catalog_conformant
from .watching import has, value, watch_until

STATUS = "nodemedic_custom_check_status"
PERF = "nodemedic_custom_check_perfdata"
ERRORS = "nodemedic_custom_check_perfdata_errors_total"


def script(directory: Path, name: str, body: str, *, shell: str = "/bin/sh") -> str:
    """Write an executable script; returns its absolute path."""
    path = directory / name
    path.write_text(f"#!{shell}\n{body}", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def check(name: str, *command: str, timeout: float = 5.0, **options: object) -> CustomCheck:
    return CustomCheck(name=name, interval=0.2, timeout=timeout, command=command, **options)  # type: ignore[arg-type]


async def results(*checks: CustomCheck) -> tuple[ProbeUpdate, dict[str, ProbeEvent]]:
    """The first update in which every check has a result, and the events until then."""
    probe = CustomProbe(checks, interval=5.0, timeout=5.0)
    updates = await watch_until(
        probe, lambda got: all(value(got[-1], STATUS, check=c.name) is not None for c in checks)
    )
    assert_catalog_conformant("custom", updates[-1].samples)
    return updates[-1], {e.subject or "": e for u in updates for e in u.events}


@pytest.mark.asyncio
async def test_each_exit_code_is_its_nagios_status(tmp_path: Path) -> None:
    checks = [
        check(f"exit{code}", script(tmp_path, f"exit{code}", f"echo 'STATE {code}'\nexit {code}\n"))
        for code in (0, 1, 2, 3, 4, 127)
    ]

    update, events = await results(*checks)

    statuses = {c.name: value(update, STATUS, check=c.name) for c in checks}
    assert statuses == {"exit0": 0, "exit1": 1, "exit2": 2, "exit3": 3, "exit4": 3, "exit127": 3}
    assert "exit0" not in events, "a healthy first result is not an event"
    assert events["exit2"].type == "io.nodemedic.custom_check.critical"
    assert events["exit2"].data["output"] == "STATE 2"
    assert events["exit2"].data["reason"] == "STATE 2"
    assert events["exit1"].type == "io.nodemedic.custom_check.warning"
    assert events["exit4"].data["reason"] == "exit code 4 (not a Nagios status): STATE 4"


@pytest.mark.asyncio
async def test_perfdata_becomes_series_and_malformed_items_are_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plugin = script(
        tmp_path,
        "check_py",
        "import sys\n"
        "print(\"DISK WARNING - / 91% | /=2643MB;5948;5958;0;5968 'free ratio'=9% "
        'bad=1,5 load=0.5 rta=U")\n'
        'print("long text | later=3s")\n'
        "sys.exit(1)\n",
        shell=sys.executable,
    )
    caplog.set_level(logging.WARNING, logger="agent.probes.custom")

    update, _ = await results(check("disk", plugin))

    assert value(update, STATUS, check="disk") == 1
    assert value(update, PERF, check="disk", label="/", uom="MB") == 2643
    assert value(update, PERF, check="disk", label="free ratio", uom="%") == 9
    assert value(update, PERF, check="disk", label="load", uom="none") == 0.5
    assert value(update, PERF, check="disk", label="later", uom="s") == 3
    assert value(update, ERRORS, check="disk") == 1
    assert "ignored 1 malformed perfdata items: 'bad': value '1,5' is not a number" in caplog.text


@pytest.mark.asyncio
async def test_huge_output_is_capped_and_the_status_still_counts(tmp_path: Path) -> None:
    plugin = script(
        tmp_path,
        "chatty",
        "echo 'CRITICAL - chatty | size=5B'\nhead -c 20000000 /dev/zero | tr '\\0' 'y'\nexit 2\n",
    )

    update, events = await results(check("chatty", plugin, max_output=4096, timeout=20.0))

    assert value(update, STATUS, check="chatty") == 2
    assert value(update, PERF, check="chatty", label="size", uom="B") == 5
    assert events["chatty"].data["output"] == "CRITICAL - chatty"


@pytest.mark.asyncio
async def test_a_hanging_plugin_is_unknown_and_killed_while_the_other_keeps_its_cadence(
    tmp_path: Path,
) -> None:
    pidfile = tmp_path / "hang.pid"
    hang = script(tmp_path, "hang", f"echo $$ > {pidfile}\nexec sleep 600\n")
    ok = script(tmp_path, "ok", "echo 'OK | n=1'\n")
    probe = CustomProbe(
        [check("hang", hang, timeout=1.0), check("ok", ok)], interval=5.0, timeout=1.0
    )

    updates = await watch_until(probe, has(STATUS, 3, check="hang"))

    ok_runs_while_hanging = sum(1 for u in updates if value(u, STATUS, check="hang") is None)
    assert ok_runs_while_hanging >= 3
    assert value(updates[-1], STATUS, check="ok") == 0
    event = next(e for u in updates for e in u.events if e.subject == "hang")
    assert event.data["reason"] == "timed out after 1s; its process group was killed"
    assert not _alive(int(pidfile.read_text()))


@pytest.mark.asyncio
async def test_a_plugin_that_forks_a_hanging_child_leaves_no_process_behind(
    tmp_path: Path,
) -> None:
    pids = tmp_path / "pids"
    plugin = script(
        tmp_path,
        "forker",
        f"sleep 600 &\necho $! >> {pids}\nsleep 600 &\necho $! >> {pids}\nwait\n",
    )
    exits_early = script(
        tmp_path, "leaver", f"sleep 600 &\necho $! >> {pids}\necho 'OK - left a child'\n"
    )

    update, events = await results(
        check("forker", plugin, timeout=1.0), check("leaver", exits_early, timeout=5.0)
    )

    assert value(update, STATUS, check="forker") == 3
    assert value(update, STATUS, check="leaver") == 0
    assert "timed out after 1s" in events["forker"].data["reason"]
    children = [int(line) for line in pids.read_text().split()]
    assert len(children) >= 3
    deadline = time.monotonic() + 10
    # Polling another process's state: there is no event to wait on.
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    assert not [pid for pid in children if _alive(pid)]


@pytest.mark.asyncio
async def test_a_plugin_that_cannot_run_is_unknown_with_the_reason(tmp_path: Path) -> None:
    not_executable = tmp_path / "plain"
    not_executable.write_text("echo hi\n", encoding="utf-8")

    update, events = await results(
        check("missing", str(tmp_path / "absent")), check("plain", str(not_executable))
    )

    assert value(update, STATUS, check="missing") == 3
    assert (
        events["missing"].data["reason"]
        == f"cannot run {tmp_path / 'absent'}: No such file or directory"
    )
    assert events["plain"].data["reason"] == f"cannot run {not_executable}: Permission denied"


@pytest.mark.asyncio
async def test_the_plugin_sees_only_path_lc_all_and_allowlisted_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHECK_TOKEN", "passed")
    monkeypatch.setenv("NODEMEDIC_SECRET", "kept")
    dump = tmp_path / "env"
    plugin = script(tmp_path, "envdump", f"env > {dump}\necho OK\n")
    config = CustomProbeConfig.model_validate(
        {"checks": [{"name": "env", "command": [plugin], "env": ["CHECK_TOKEN", "ABSENT"]}]}
    )

    probe = CustomProbe.from_config(config)
    await watch_until(probe, has(STATUS, 0, check="env"))

    seen = dict(line.split("=", 1) for line in dump.read_text().splitlines())
    allowed = "CHECK_TOKEN"
    assert set(seen) - {"PWD", "SHLVL", "_"} == {"PATH", "LC_ALL", allowed}
    assert seen[allowed] == "passed"
    assert seen["PWD"] == "/"  # noqa: S105 - the working directory, not a password


@pytest.mark.asyncio
async def test_a_timed_out_run_keeps_the_last_perfdata(tmp_path: Path) -> None:
    flag = tmp_path / "hang-now"
    plugin = script(tmp_path, "flaky", f"[ -e {flag} ] && exec sleep 600\necho 'OK | users=4'\n")
    probe = CustomProbe([check("flaky", plugin, timeout=0.5)], interval=5.0, timeout=0.5)
    watch = probe.watch()
    try:
        async with asyncio.timeout(30):
            async for update in watch:
                if value(update, STATUS, check="flaky") == 0:
                    flag.touch()
                if value(update, STATUS, check="flaky") == 3:
                    break
    finally:
        await watch.aclose()  # type: ignore[attr-defined]

    assert value(update, PERF, check="flaky", label="users", uom="none") == 4


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose: it runs nothing and its parent will reap it.
    status = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    return status.rsplit(")", 1)[1].split()[0] != "Z"
