"""The units probe without a systemd: its config, what it does on a host without systemd,
and how it reports a bus it cannot reach (the real socket path simply does not exist).
The behaviour against a real systemd is in tests/integration/test_units_systemd.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config import ProbesConfig, UnitsProbeConfig
from agent.probes import build_probes
from agent.probes.base import ProbeUpdate
from agent.probes.units import UnitsProbe
from agent.systemd_dbus import UnitState


def test_units_are_watched_by_default_with_a_one_minute_resync() -> None:
    config = ProbesConfig()

    probe = next(p for p in build_probes(config) if p.name == "units")

    assert isinstance(probe, UnitsProbe)
    assert probe.patterns == ("*.service",)
    assert (probe.interval, probe.timeout, probe.restart_window) == (60.0, 10.0, 600.0)
    assert probe.bus_address is None


def test_unit_globs_bus_and_window_come_from_config() -> None:
    config = ProbesConfig.model_validate(
        {
            "units": {
                "units": ["nginx.service", "getty@*.service"],
                "interval": "30s",
                "timeout": "2s",
                "restart_window": "5m",
                "bus": "unix:path=/tmp/x/system_bus_socket",
            }
        }
    )

    probe = next(p for p in build_probes(config) if p.name == "units")

    assert isinstance(probe, UnitsProbe)
    assert probe.exact == ("nginx.service",)
    assert probe.watches("getty@tty1.service")
    assert not probe.watches("sshd.service")
    assert (probe.interval, probe.timeout, probe.restart_window) == (30.0, 2.0, 300.0)
    assert probe.bus_address == "unix:path=/tmp/x/system_bus_socket"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"units": ["nginx service"]}, "invalid unit name or glob 'nginx service'"),
        ({"units": ["a;b.service"]}, "invalid unit name or glob"),
        ({"bus": "/run/dbus/system_bus_socket"}, "invalid D-Bus address"),
        ({"restart_window": "0s"}, "restart_window must be positive"),
        ({"unit": ["x.service"]}, "Extra inputs are not permitted"),
    ],
)
def test_bad_units_config_is_rejected_naming_the_value(
    entry: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        UnitsProbeConfig.model_validate(entry)


@pytest.mark.asyncio
async def test_a_host_without_systemd_reports_no_units_once_at_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    probe = UnitsProbe(interval=0.1, booted_marker=tmp_path / "run-systemd-system")
    caplog.set_level(logging.INFO, logger="agent.probes.units")
    updates = probe.watch()
    try:
        first = await anext(updates)
        second = await anext(updates)
    finally:
        await updates.aclose()

    assert first == second == ProbeUpdate()
    assert [r.message for r in caplog.records] == [
        "probe units: this host was not booted with systemd; no units to watch"
    ]


@pytest.mark.asyncio
async def test_an_unreachable_bus_is_an_error_update_and_the_watch_goes_on(
    tmp_path: Path,
) -> None:
    bus = f"unix:path={tmp_path}/system_bus_socket"
    probe = UnitsProbe(units=["x.service"], interval=0.2, timeout=1.0, bus_address=bus)
    updates = probe.watch()
    try:
        first = await anext(updates)
        second = await anext(updates)
    finally:
        await updates.aclose()

    for update in (first, second):
        assert isinstance(update, ProbeUpdate)
        assert update.error is not None
        assert update.error.startswith(f"probe units: cannot connect to {bus}")


def test_unit_state_merges_signal_properties_and_describes_itself() -> None:
    state = UnitState("web.service", "loaded", "active", "running", "success", 0, 42, 10.0)

    failed = state.merged(
        {
            "ActiveState": "failed",
            "SubState": "failed",
            "Result": "exit-code",
            "MainPID": 0,
            "StateChangeTimestampMonotonic": 12_500_000,
            "FreezerState": "running",
        }
    )

    assert failed.failed
    assert not failed.active
    assert failed.state_change == 12.5
    assert failed.describe() == "failed/failed (exit-code)"
    assert state.describe() == "active/running"
    assert state.merged({"Unrelated": 1}) is state
