"""``exec`` and ``journal.vacuum`` running real programs."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from remediations.actions.base import ActionError
from remediations.actions.exec import ExecAction, ExecParams
from remediations.actions.journald import JournalVacuumAction, JournalVacuumParams
from remediations.actions.processes import ProcessTable
from tests.actions import step

pytestmark = pytest.mark.asyncio

SH = "/bin/sh"


def _exec(*argv: str, **values: object) -> ExecParams:
    return ExecParams.model_validate({"argv": list(argv), **values})


def _gone(pid: int, *, timeout: float = 30.0) -> bool:
    """Wait until ``pid`` no longer runs (gone or a zombie awaiting its reaper)."""
    table = ProcessTable()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = table.stat(pid)
        if fields is None or fields.state == "Z":
            return True
        time.sleep(0.05)
    return False


async def test_a_program_runs_with_its_output_in_the_result() -> None:
    params = _exec("/bin/echo", "hello", "world")
    action = ExecAction()
    await action.precheck(step(params))
    result = await action.apply(step(params))
    assert result.ok
    assert result.summary == "ran /bin/echo hello world: exit 0"
    assert result.details["stdout"] == "hello world\n"
    assert result.details["returncode"] == 0
    assert (await action.verify(step(params))).ok


async def test_a_nonzero_exit_fails_with_the_code_and_the_stderr_tail() -> None:
    script = "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo line$i >&2; done; exit 3"
    with pytest.raises(ActionError) as err:
        await ExecAction().apply(step(_exec(SH, "-c", script)))
    message = str(err.value)
    assert "exited with 3" in message
    assert "line12" in message
    assert "line3\\n" in message  # the last ten lines...
    assert "line2\\n" not in message  # ...and no more


async def test_a_timeout_kills_the_program_and_what_it_forked(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 600 & echo $! > {pidfile}; wait"
    params = _exec(SH, "-c", script, timeout="500ms")
    with pytest.raises(ActionError, match=r"did not finish within 0\.5s and was killed"):
        await ExecAction().apply(step(params))
    assert _gone(int(pidfile.read_text()))


async def test_the_step_timeout_bounds_the_program_too() -> None:
    params = _exec("/bin/sleep", "600", timeout="10m")
    with pytest.raises(ActionError, match=r"within 0\.3s"):
        await ExecAction().apply(step(params, timeout=0.3))


async def test_processes_left_behind_by_a_finished_program_are_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    params = _exec(SH, "-c", f"sleep 600 & echo $! > {pidfile}; echo started")
    result = await ExecAction().apply(step(params))
    assert result.details["stdout"] == "started\n"
    assert result.details["leftovers_killed"] is True
    assert _gone(int(pidfile.read_text()))


async def test_a_child_that_left_the_group_holding_the_pipe_does_not_hang_it(
    tmp_path: Path,
) -> None:
    pidfile = tmp_path / "escaped.pid"
    # setsid puts sleep in a session of its own, beyond the group kill; it keeps stdout.
    script = f"setsid sleep 600 & echo $! > {pidfile}; echo bye"
    try:
        result = await asyncio.wait_for(ExecAction().apply(step(_exec(SH, "-c", script))), 30)
        assert result.ok
        assert result.details["stdout"] == "bye\n"
    finally:
        os.kill(int(pidfile.read_text()), 9)


async def test_the_environment_is_stripped_to_the_allowlist(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NODEMEDIC_TEST_SECRET", "hunter2")
    monkeypatch.setenv("LANG", "C.UTF-8")
    params = _exec("/usr/bin/env", env_allow=["PATH", "LANG", "UNSET_VAR"], env={"MODE": "fix"})
    result = await ExecAction().apply(step(params))
    names = {line.split("=", 1)[0] for line in result.details["stdout"].splitlines()}
    assert names == {"PATH", "LANG", "MODE"}
    assert "hunter2" not in result.details["stdout"]
    assert "MODE=fix" in result.details["stdout"]
    assert result.details["env"] == ["LANG", "MODE", "PATH"]


async def test_output_beyond_the_cap_keeps_the_tail() -> None:
    script = "i=0; while [ $i -lt 5000 ]; do echo line$i; i=$((i+1)); done"
    result = await ExecAction().apply(step(_exec(SH, "-c", script, output_cap="1KiB")))
    out = result.details["stdout"]
    assert len(out) == 1024
    assert out.endswith("line4999\n")
    total = sum(len(f"line{i}\n") for i in range(5000))
    assert result.details["stdout_dropped"] == total - 1024


async def test_dry_run_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "touched"
    result = await ExecAction().apply(step(_exec("/usr/bin/touch", str(marker)), dry_run=True))
    assert result.summary.startswith(f"would run /usr/bin/touch {marker} (env ")
    assert not marker.exists()


async def test_precheck_refuses_what_cannot_run(tmp_path: Path) -> None:
    plain = tmp_path / "script"
    plain.write_text("#!/bin/sh\n")
    for program in (str(tmp_path / "missing"), str(tmp_path), str(plain)):
        with pytest.raises(ActionError, match=f"exec: {program} is not an executable file"):
            await ExecAction().precheck(step(_exec(program)))
    with pytest.raises(ActionError, match="working directory /nonexistent-x does not exist"):
        await ExecAction().precheck(step(_exec("/bin/true", cwd="/nonexistent-x")))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"argv": []}, "argv\n  Tuple should have at least 1 item"),
        ({"argv": ["echo"]}, "'echo' is not an absolute path"),
        ({"argv": ["/bin/echo"], "shell": True}, "shell\n  Extra inputs are not permitted"),
        ({"argv": ["/bin/echo"], "env_allow": ["BAD-NAME"]}, "'BAD-NAME' is not an environment"),
        ({"argv": ["/bin/echo"], "env": {"1X": "y"}}, "'1X' is not an environment variable"),
        ({"argv": ["/bin/echo"], "timeout": "0s"}, "timeout\n  Value error, must be longer"),
        ({"argv": ["/bin/echo"], "output_cap": 10}, "output_cap\n  Input should be greater"),
        ({"argv": ["/bin/echo"], "cwd": "tmp"}, "cwd\n  Value error, 'tmp' is not an absolute"),
    ],
)
async def test_bad_exec_params_say_what_is_wrong(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        ExecParams.model_validate(values)
    assert message in str(err.value)


async def test_journal_vacuum_runs_journalctl(tmp_path: Path) -> None:
    params = JournalVacuumParams.model_validate(
        {"max_size": "1MiB", "max_age": "2d", "directory": str(tmp_path)}
    )
    action = JournalVacuumAction()
    command = (
        f"/usr/bin/journalctl --directory={tmp_path} --vacuum-size=1048576 --vacuum-time=172800s"
    )
    planned = await action.apply(step(params, dry_run=True))
    assert planned.summary == f"would run {command}"

    await action.precheck(step(params))
    result = await action.apply(step(params))
    assert result.ok
    assert result.summary.startswith(f"ran {command}: Vacuuming done, freed 0B")

    missing = params.model_copy(update={"journalctl": str(tmp_path / "journalctl")})
    with pytest.raises(ActionError, match="journalctl is not an executable file"):
        await action.precheck(step(missing))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "give max_size, max_age or both"),
        ({"max_size": "lots"}, "max_size\n  could not parse value and unit"),
        ({"max_age": "500ms"}, "max_age must be at least 1s"),
        ({"max_age": "1d", "vacuum_files": 3}, "vacuum_files\n  Extra inputs are not permitted"),
        ({"max_age": "1d", "journalctl": "journalctl"}, "'journalctl' is not an absolute path"),
    ],
)
async def test_bad_vacuum_params_say_what_is_wrong(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        JournalVacuumParams.model_validate(values)
    assert message in str(err.value)
