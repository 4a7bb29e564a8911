"""The systemd actions against a real systemd 252 booted in nspawn: they start, stop,
restart and reset a real unit, verify the outcome, and in dry run touch nothing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import ValidationError

from agent.config_drain import DrainConfig
from agent.config_kubernetes import KubernetesConfig
from remediations.actions.base import ActionContext, ActionError
from remediations.actions.processes import ProcessMatch
from remediations.actions.systemd import (
    ACTIONS,
    ReloadUnit,
    ResetFailedUnit,
    RestartUnit,
    StartUnit,
    StopUnit,
    UnitParams,
)
from tests.nspawn import (  # the fixtures are imported to register them in this module
    NspawnSystemd,
    nspawn_systemd_fixture,  # noqa: F401
)

SLEEPER = "[Service]\nExecStart=/bin/sleep infinity\nExecReload=/bin/true\n"
FAILS = "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'exit 3'\n"
STATE = ("ActiveState", "SubState", "MainPID", "NRestarts", "InvocationID")


@dataclass
class _Services:
    """What the engine lends: here the container's bus, and events recorded in a list."""

    systemd_bus: str | None
    node: str = "test-node"
    protected_pids: frozenset[int] = frozenset({1})
    process_groups: Mapping[str, ProcessMatch] = field(default_factory=dict)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)
    drain: DrainConfig = field(default_factory=DrainConfig)
    events: list[tuple[str, str | None, Mapping[str, Any]]] = field(default_factory=list)

    def emit(self, type: str, subject: str | None, data: Mapping[str, Any]) -> None:
        self.events.append((type, subject, data))


def _ctx(container: NspawnSystemd, unit: str, *, dry_run: bool = False) -> ActionContext:
    return ActionContext(
        run_id="run-1",
        playbook="test",
        target=unit,
        params=UnitParams(unit=unit),
        dry_run=dry_run,
        timeout=30.0,
        services=_Services(systemd_bus=container.bus_address),
    )


@pytest.mark.systemd
@pytest.mark.asyncio
async def test_restart_stop_and_start_a_real_unit(nspawn_systemd: NspawnSystemd) -> None:
    unit = nspawn_systemd.unit_name("acted-on")
    nspawn_systemd.install_unit(unit, SLEEPER)
    nspawn_systemd.run("systemctl", "start", unit)
    before = nspawn_systemd.systemctl_show(unit, *STATE)
    try:
        restart = RestartUnit()
        await restart.precheck(_ctx(nspawn_systemd, unit))
        restarted = await restart.apply(_ctx(nspawn_systemd, unit))
        after_restart = nspawn_systemd.systemctl_show(unit, *STATE)
        verified_restart = await restart.verify(_ctx(nspawn_systemd, unit))

        stopped = await StopUnit().apply(_ctx(nspawn_systemd, unit))
        after_stop = nspawn_systemd.systemctl_show(unit, *STATE)
        verified_stop = await StopUnit().verify(_ctx(nspawn_systemd, unit))
        start_while_stopped = await StartUnit().verify(_ctx(nspawn_systemd, unit))

        started = await StartUnit().apply(_ctx(nspawn_systemd, unit))
        after_start = nspawn_systemd.systemctl_show(unit, *STATE)
        reloaded = await ReloadUnit().apply(_ctx(nspawn_systemd, unit))
    finally:
        nspawn_systemd.remove_unit(unit)

    assert restarted.ok
    assert restarted.summary == f"restarted {unit}: active/running"
    assert after_restart["MainPID"] != before["MainPID"]
    assert after_restart["InvocationID"] != before["InvocationID"]
    assert restarted.details["job"] == "done"
    assert verified_restart.ok
    assert stopped.ok
    assert after_stop["ActiveState"] == "inactive"
    assert verified_stop.ok
    assert not start_while_stopped.ok
    assert "not active" in start_while_stopped.summary
    assert started.ok
    assert after_start["ActiveState"] == "active"
    assert reloaded.ok


@pytest.mark.systemd
@pytest.mark.asyncio
async def test_dry_run_reports_what_it_would_do_and_touches_nothing(
    nspawn_systemd: NspawnSystemd,
) -> None:
    unit = nspawn_systemd.unit_name("untouched")
    nspawn_systemd.install_unit(unit, SLEEPER)
    nspawn_systemd.run("systemctl", "start", unit)
    before = nspawn_systemd.systemctl_show(unit, *STATE)
    try:
        results = [await cls().apply(_ctx(nspawn_systemd, unit, dry_run=True)) for cls in ACTIONS]
        after = nspawn_systemd.systemctl_show(unit, *STATE)
    finally:
        nspawn_systemd.remove_unit(unit)

    assert after == before
    assert [r.summary for r in results] == [
        f"would start {unit} (now active/running)",
        f"would stop {unit} (now active/running)",
        f"would restart {unit} (now active/running)",
        f"would reload {unit} (now active/running)",
        f"would reset the failed state of {unit} (now active/running)",
    ]
    assert all(r.ok and "job" not in r.details for r in results)


@pytest.mark.systemd
@pytest.mark.asyncio
async def test_reset_failed_clears_a_failed_unit_and_a_failing_start_is_an_error(
    nspawn_systemd: NspawnSystemd,
) -> None:
    unit = nspawn_systemd.unit_name("failed")
    nspawn_systemd.install_unit(unit, FAILS)
    try:
        with pytest.raises(ActionError) as failing:
            await StartUnit().apply(_ctx(nspawn_systemd, unit))
        failed = nspawn_systemd.systemctl_show(unit, "ActiveState")
        reset = await ResetFailedUnit().apply(_ctx(nspawn_systemd, unit))
        verified = await ResetFailedUnit().verify(_ctx(nspawn_systemd, unit))
    finally:
        nspawn_systemd.remove_unit(unit)

    assert f"the start job for {unit} ended 'failed'" in str(failing.value)
    assert failed["ActiveState"] == "failed"
    assert reset.summary == f"reset the failed state of {unit}: inactive/dead"
    assert verified.ok


@pytest.mark.systemd
@pytest.mark.asyncio
async def test_precheck_refuses_a_unit_systemd_does_not_know(
    nspawn_systemd: NspawnSystemd,
) -> None:
    ctx = _ctx(nspawn_systemd, "nm-never-installed.service")

    with pytest.raises(ActionError, match=r"nm-never-installed\.service.*not-found"):
        await RestartUnit().precheck(ctx)


@pytest.mark.asyncio
async def test_an_unreachable_bus_is_an_action_error_naming_the_address(tmp_path: Any) -> None:
    bus = f"unix:path={tmp_path}/no-bus"
    ctx = ActionContext(
        run_id="run-1",
        playbook="test",
        target="x.service",
        params=UnitParams(unit="x.service"),
        dry_run=True,
        timeout=5.0,
        services=_Services(systemd_bus=bus),
    )

    with pytest.raises(ActionError, match=r"cannot connect to unix:path=.*no-bus"):
        await RestartUnit().apply(ctx)


@pytest.mark.parametrize(
    ("unit", "why"),
    [
        ("nginx", "invalid unit name"),
        ("*.service", "invalid unit name"),
        ("a b.service", "invalid unit name"),
        ("getty@.service", "template"),
        ("x.service; rm -rf /", "invalid unit name"),
        ("", "invalid unit name"),
    ],
)
def test_bad_unit_params_are_rejected_with_the_reason(unit: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        UnitParams(unit=unit)


def test_every_action_names_itself_and_takes_unit_params() -> None:
    names = [cls.name for cls in ACTIONS]

    assert names == [
        "systemd.start_unit",
        "systemd.stop_unit",
        "systemd.restart_unit",
        "systemd.reload_unit",
        "systemd.reset_failed",
    ]
    assert all(cls.Params is UnitParams for cls in ACTIONS)
    assert [cls.disruptive for cls in ACTIONS] == [False, True, True, False, False]
