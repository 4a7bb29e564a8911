"""The units probe and the D-Bus client against a real systemd 252 booted in nspawn.

Units here crash on purpose: one fails, one flaps (``Restart=always``), one fails once and
then recovers. The probe must see each change from systemd's signals, long before its
resync interval (set to 60 s, so a change seen within the test's wait came by signal).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

from agent.errors import SystemdError
from agent.probes.base import ProbeUpdate
from agent.probes.catalog import PROBE_NAMES
from agent.probes.units import UnitsProbe
from agent.systemd_dbus import SystemdClient
from tests.conftest import AgentProcess, http_get, http_json
from tests.nspawn import (  # the fixtures are imported to register them in this module
    NspawnSystemd,
    nspawn_factory_fixture,  # noqa: F401
    nspawn_systemd_fixture,  # noqa: F401
)

pytestmark = pytest.mark.systemd

RESYNC = 60.0
WAIT = 30.0

FAILS = "[Service]\nExecStart=/bin/sh -c 'sleep 0.2; exit 3'\n"
FLAPS = "[Service]\nExecStart=/bin/sh -c 'sleep 0.1; exit 1'\nRestart=always\nRestartSec=100ms\n"
# Fails on its first start only: the marker file survives in the container's /var/tmp.
RECOVERS = (
    "[Service]\n"
    "ExecStart=/bin/sh -c 'if [ -e /var/tmp/{marker} ]; then exec sleep infinity; "
    "else touch /var/tmp/{marker}; exit 1; fi'\n"
    "Restart=on-failure\nRestartSec=300ms\n"
)


def _values(update: ProbeUpdate, unit: str) -> dict[str, float]:
    return {s.metric: s.value for s in update.samples if s.label_dict.get("unit") == unit}


async def _wait_for(
    updates: AsyncIterator[ProbeUpdate],
    unit: str,
    predicate: Callable[[Mapping[str, float]], bool],
    within: float = WAIT,
) -> dict[str, float]:
    """Iterate the probe's updates until ``unit``'s values satisfy ``predicate``."""
    seen: dict[str, float] = {}
    async with asyncio.timeout(within):
        async for update in updates:
            assert update.error is None, update.error
            seen = _values(update, unit)
            if predicate(seen):
                return seen
    pytest.fail(f"probe ended before {unit} reached the state; last {seen}")


@pytest.fixture
def units_probe(nspawn_systemd: NspawnSystemd) -> UnitsProbe:
    """A probe on the container's bus watching the tests' units, resync far away."""
    return UnitsProbe(
        units=["nm-*.service"],
        interval=RESYNC,
        timeout=10.0,
        bus_address=nspawn_systemd.bus_address,
    )


@pytest.mark.asyncio
async def test_a_failing_unit_shows_failed_from_systemds_signal(
    nspawn_systemd: NspawnSystemd, units_probe: UnitsProbe
) -> None:
    unit = nspawn_systemd.unit_name("fails")
    nspawn_systemd.install_unit(unit, FAILS)
    updates = units_probe.watch()
    try:
        first = await anext(updates)
        assert first.error is None
        nspawn_systemd.run("systemctl", "start", "--no-block", unit)

        failed = await _wait_for(updates, unit, lambda v: v.get("nodemedic_unit_failed") == 1)
    finally:
        await updates.aclose()
        nspawn_systemd.remove_unit(unit)

    assert failed["nodemedic_unit_active"] == 0
    assert failed["nodemedic_unit_restarts_total"] == 0


@pytest.mark.asyncio
async def test_a_flapping_unit_counts_its_restarts(
    nspawn_systemd: NspawnSystemd, units_probe: UnitsProbe
) -> None:
    unit = nspawn_systemd.unit_name("flaps")
    nspawn_systemd.install_unit(unit, FLAPS)
    updates = units_probe.watch()
    try:
        await anext(updates)
        nspawn_systemd.run("systemctl", "start", "--no-block", unit)

        flapping = await _wait_for(
            updates, unit, lambda v: v.get("nodemedic_unit_recent_restarts", 0) >= 3
        )
    finally:
        await updates.aclose()
        nspawn_systemd.remove_unit(unit)

    assert flapping["nodemedic_unit_restarts_total"] >= 3


@pytest.mark.asyncio
async def test_a_unit_that_recovers_goes_from_failed_to_active(
    nspawn_systemd: NspawnSystemd, units_probe: UnitsProbe
) -> None:
    unit = nspawn_systemd.unit_name("recovers")
    nspawn_systemd.install_unit(unit, RECOVERS.format(marker=unit))
    updates = units_probe.watch()
    try:
        await anext(updates)
        nspawn_systemd.run("systemctl", "start", "--no-block", unit)

        await _wait_for(updates, unit, lambda v: v.get("nodemedic_unit_restarts_total") == 0)
        active = await _wait_for(updates, unit, lambda v: v.get("nodemedic_unit_active") == 1)
    finally:
        await updates.aclose()
        nspawn_systemd.remove_unit(unit)

    assert active["nodemedic_unit_failed"] == 0
    assert active["nodemedic_unit_restarts_total"] == 1
    assert active["nodemedic_unit_recent_restarts"] == 1


@pytest.mark.asyncio
async def test_the_client_reads_units_lists_globs_and_names_the_unit_in_errors(
    nspawn_systemd: NspawnSystemd,
) -> None:
    unit = nspawn_systemd.unit_name("sleeps")
    nspawn_systemd.install_unit(unit, "[Service]\nExecStart=/bin/sleep infinity\n")
    try:
        async with SystemdClient(bus_address=nspawn_systemd.bus_address, timeout=10.0) as client:
            started = await client.start_unit(unit, job_timeout=WAIT)
            state = await client.unit(unit)
            listed = await client.list_units([unit.replace("sleeps", "sl*ps")])
            with pytest.raises(SystemdError) as refused:
                await client.start_unit("nm-no-such-unit.service", job_timeout=WAIT)
            stopped = await client.stop_unit(unit, job_timeout=WAIT)
            after = await client.unit(unit)
    finally:
        nspawn_systemd.remove_unit(unit)

    assert started.ok
    assert (state.active_state, state.sub_state) == ("active", "running")
    assert state.main_pid is not None
    assert state.main_pid > 1
    assert 0 <= time.monotonic() - state.state_change < WAIT
    assert listed == [unit]
    assert refused.value.unit == "nm-no-such-unit.service"
    assert refused.value.dbus_error == "org.freedesktop.systemd1.NoSuchUnit"
    assert "nm-no-such-unit.service" in str(refused.value)
    assert stopped.ok
    assert after.active_state == "inactive"


@pytest.mark.asyncio
async def test_a_bus_that_goes_away_is_an_error_update_then_the_probe_recovers(
    nspawn_factory: Callable[[], NspawnSystemd],
) -> None:
    container = nspawn_factory()
    probe = UnitsProbe(
        units=["dbus.service"], interval=RESYNC, timeout=5.0, bus_address=container.bus_address
    )
    updates = probe.watch()
    try:
        first = await anext(updates)
        assert _values(first, "dbus.service")["nodemedic_unit_active"] == 1

        container.run("systemctl", "stop", "dbus.socket", "dbus.service")
        async with asyncio.timeout(WAIT):
            down = await anext(updates)
            while down.error is None:
                down = await anext(updates)
        container.run("systemctl", "start", "dbus.socket", "dbus.service")
        async with asyncio.timeout(WAIT):
            back = await anext(updates)
            while back.error is not None:
                back = await anext(updates)
    finally:
        await updates.aclose()

    assert "connection" in down.error or "connect" in down.error
    assert "probe units" in down.error
    assert _values(back, "dbus.service")["nodemedic_unit_active"] == 1


def _poll(check: Callable[[], Any], what: str, agent: AgentProcess, within: float = WAIT) -> Any:
    """Call ``check`` until it returns something truthy; fail with the agent's log."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert agent.proc is not None
        assert agent.proc.poll() is None, f"agent exited:\n{agent.log()}"
        result = check()
        if result:
            return result
        time.sleep(0.1)
    pytest.fail(f"{what} not seen within {within}s; agent log:\n{agent.log()}")


def test_the_agent_fires_unit_failed_and_survives_the_bus_going_away(
    nspawn_factory: Callable[[], NspawnSystemd], agent_factory: Callable[..., AgentProcess]
) -> None:
    container = nspawn_factory()
    unit = container.unit_name("agent-sees")
    container.install_unit(unit, FAILS)
    probes: dict[str, Any] = {name: {"enabled": False} for name in PROBE_NAMES}
    probes["units"] = {"units": ["nm-*.service"], "interval": "60s", "bus": container.bus_address}
    rules = [
        {"name": "unit-failed", "metric": "nodemedic_unit_failed", "op": "==", "threshold": 1},
        {
            "name": "units-probe-down",
            "metric": "nodemedic_probe_up",
            "labels": {"probe": "units"},
            "op": "<",
            "threshold": 1,
        },
    ]
    agent = agent_factory({"probes": probes, "rules": rules})
    agent.start()
    agent.wait_ready()

    def firing(name: str) -> list[dict[str, Any]]:
        conditions = http_json(agent.url + "/v1/conditions?state=firing")["conditions"]
        return [c for c in conditions if c["name"] == name]

    def units_status() -> dict[str, Any]:
        statuses = http_json(agent.url + "/v1/probes")["probes"]
        return next(p for p in statuses if p["name"] == "units")

    container.run("systemctl", "start", "--no-block", unit)
    failed = _poll(lambda: firing("unit-failed"), "unit-failed firing", agent)

    container.run("systemctl", "stop", "dbus.socket", "dbus.service")
    down = _poll(lambda: not units_status()["up"] and units_status(), "units probe down", agent)
    probe_down = _poll(lambda: firing("units-probe-down"), "units-probe-down firing", agent)
    healthz, _ = http_get(agent.url + "/healthz")

    container.run("systemctl", "start", "dbus.socket", "dbus.service")
    _poll(lambda: units_status()["up"], "units probe back up", agent, within=60)
    still_failed = firing("unit-failed")

    assert failed[0]["labels"] == {"unit": unit}
    assert "probe units" in down["error"]
    assert probe_down[0]["labels"] == {"probe": "units"}
    assert healthz == 200
    assert [c["labels"] for c in still_failed] == [{"unit": unit}]
    assert "systemd reachable again" in agent.log()
