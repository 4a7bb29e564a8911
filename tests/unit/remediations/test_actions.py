"""The action registry, ``event.escalate``, and the params of ``disk.cleanup``."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from remediations.actions.confined import glob_regex
from remediations.actions.disk import DiskCleanupParams, FreeTarget
from remediations.actions.event import ESCALATED, EscalateAction, EscalateParams
from remediations.actions.exec import ExecParams
from remediations.actions.registry import (
    ACTIONS,
    UnknownActionError,
    get_action,
    is_disruptive,
    is_idempotent,
)
from tests.actions import RecordingServices, step


def test_every_action_is_registered_by_its_name() -> None:
    assert list(ACTIONS) == [
        "disk.cleanup",
        "drain.exec",
        "drain.haproxy",
        "drain.kubernetes",
        "drain.node",
        "event.escalate",
        "exec",
        "journal.vacuum",
        "process.signal",
        "systemd.reload_unit",
        "systemd.reset_failed",
        "systemd.restart_unit",
        "systemd.start_unit",
        "systemd.stop_unit",
        "undrain.exec",
        "undrain.haproxy",
        "undrain.kubernetes",
        "undrain.node",
    ]
    for name, cls in ACTIONS.items():
        assert cls.name == name
        assert get_action(name) is cls
        config = cls.Params.model_config
        assert config.get("extra") == "forbid", name
        assert config.get("frozen") is True, name
        cls()  # the engine makes them without arguments


def test_an_unknown_action_lists_the_known_ones() -> None:
    with pytest.raises(UnknownActionError) as err:
        get_action("systemd.restart")
    assert str(err.value) == (
        "unknown action 'systemd.restart'; known actions: disk.cleanup, drain.exec, "
        "drain.haproxy, drain.kubernetes, drain.node, event.escalate, exec, journal.vacuum, "
        "process.signal, systemd.reload_unit, systemd.reset_failed, systemd.restart_unit, "
        "systemd.start_unit, systemd.stop_unit, undrain.exec, undrain.haproxy, "
        "undrain.kubernetes, undrain.node"
    )


def test_exec_steps_say_themselves_whether_they_are_disruptive() -> None:
    exec_cls = get_action("exec")
    default = ExecParams(argv=("/bin/true",))
    assert is_disruptive(exec_cls, default)
    assert not is_idempotent(exec_cls, default)
    harmless = ExecParams(argv=("/bin/true",), disruptive=False, idempotent=True)
    assert not is_disruptive(exec_cls, harmless)
    assert is_idempotent(exec_cls, harmless)
    escalate = get_action("event.escalate")
    assert not is_disruptive(escalate, EscalateParams())
    assert is_disruptive(get_action("process.signal"), EscalateParams())  # no such param


@pytest.mark.asyncio
async def test_escalate_emits_one_event_for_humans() -> None:
    services = RecordingServices()
    params = EscalateParams(message="nginx keeps failing; breaker open")
    ctx = step(params, target="nginx.service", services=services)
    action = EscalateAction()

    planned = await action.apply(step(params, dry_run=True, services=services))
    assert planned.summary == (
        f"would emit {ESCALATED} for target-1: nginx keeps failing; breaker open"
    )
    assert services.emitted == []

    await action.precheck(ctx)
    result = await action.apply(ctx)
    assert result.ok
    assert services.emitted == [
        (
            "io.nodemedic.remediation.escalated",
            "nginx.service",
            {
                "run": "run-1",
                "playbook": "pb",
                "target": "nginx.service",
                "node": "node-1",
                "message": "nginx keeps failing; breaker open",
                "labels": {},
            },
        )
    ]
    assert (await action.verify(ctx)).ok


def test_escalate_params_are_checked() -> None:
    with pytest.raises(ValidationError, match="msg\n  Extra inputs are not permitted"):
        EscalateParams.model_validate({"msg": "x"})
    with pytest.raises(ValidationError, match="message\n  String should have at least 1"):
        EscalateParams.model_validate({"message": ""})


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("*.log", ["a.log", ".log"], ["dir/a.log", "a.log.1"]),
        ("**/*.log", ["a.log", "d/a.log", "d/e/a.log"], ["a.txt", "d/a.log/x"]),
        ("cache/**", ["cache/x", "cache/a/b"], ["cache", "other/x"]),
        ("app.[0-9].gz", ["app.3.gz"], ["app.x.gz", "app.10.gz"]),
        ("app.[!0-9]", ["app.x"], ["app.1"]),
        ("a?c/*.tmp", ["abc/x.tmp"], ["a/c/x.tmp", "abc/d/x.tmp"]),
        ("weird(1)+.log", ["weird(1)+.log"], ["weird1.log"]),
    ],
)
def test_globs_match_relative_paths(pattern: str, matches: list[str], misses: list[str]) -> None:
    regex = glob_regex(pattern)
    assert all(regex.fullmatch(path) for path in matches)
    assert not any(regex.fullmatch(path) for path in misses)


def test_free_targets_in_bytes_or_as_a_ratio() -> None:
    def target(value: object) -> FreeTarget:
        params = DiskCleanupParams.model_validate(
            {"root": "/var/log/app", "globs": ["*"], "free_target": value}
        )
        return params.free_target

    assert target("2GiB") == FreeTarget(bytes=2 * 1024**3)
    assert target(4096) == FreeTarget(bytes=4096)
    assert target(0.25) == FreeTarget(ratio=0.25)
    assert target("20%") == FreeTarget(ratio=0.2)
    assert target("20%").wanted(1000) == 200
    assert target("1KiB").wanted(10**9) == 1024


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"root": "/", "globs": ["*"], "free_target": 1}, "'/' may not be cleaned"),
        ({"root": "/proc/1", "globs": ["*"], "free_target": 1}, "'/proc/1' may not be cleaned"),
        ({"root": "var/log", "globs": ["*"], "free_target": 1}, "'var/log' is not an absolute"),
        ({"root": "/var/../etc", "globs": ["*"], "free_target": 1}, "'..' is not allowed"),
        ({"root": "/v", "globs": [], "free_target": 1}, "globs\n  Tuple should have at least"),
        ({"root": "/v", "globs": ["../*"], "free_target": 1}, "without '..'"),
        ({"root": "/v", "globs": ["/etc/*"], "free_target": 1}, "must be relative to the root"),
        ({"root": "/v", "globs": ["*"]}, "free_target\n  Field required"),
        ({"root": "/v", "globs": ["*"], "free_target": "150%"}, "between 0 and 1"),
        ({"root": "/v", "globs": ["*"], "free_target": 1.5}, "between 0 and 1"),
        ({"root": "/v", "globs": ["*"], "free_target": 0}, "in bytes must be positive"),
        ({"root": "/v", "globs": ["*"], "free_target": "lots"}, "could not parse value"),
        ({"root": "/v", "globs": ["*"], "free_target": True}, "use bytes (1073741824"),
        ({"root": "/v", "globs": ["*"], "free_target": 1, "max_files": 0}, "max_files\n"),
        ({"root": "/v", "globs": ["*"], "free_target": 1, "min_age": "x"}, "invalid duration"),
        ({"root": "/v", "globs": ["*"], "free_target": 1, "rmdir": 1}, "rmdir\n  Extra inputs"),
    ],
)
def test_bad_cleanup_params_say_what_is_wrong(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        DiskCleanupParams.model_validate(values)
    assert message in str(err.value)
