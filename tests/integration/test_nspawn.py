"""The nspawn systemd fixture itself: it boots, its bus answers the host, units install,
and a stopped container leaves no cgroup behind."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.nspawn import (  # the fixtures are imported to register them in this module
    ContainerFactory,
    NspawnSystemd,
    nspawn_factory_fixture,  # noqa: F401
    nspawn_systemd_fixture,  # noqa: F401
)

pytestmark = pytest.mark.systemd


def _busctl(container: NspawnSystemd, *args: str) -> subprocess.CompletedProcess[str]:
    busctl = shutil.which("busctl")
    assert busctl is not None, "busctl not found: install Debian's systemd package"
    return subprocess.run(
        [busctl, f"--address={container.bus_address}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_host_reaches_the_containers_systemd_on_its_system_bus(
    nspawn_systemd: NspawnSystemd,
) -> None:
    result = _busctl(
        nspawn_systemd,
        "get-property",
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        "SystemState",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 's "running"'


def test_an_installed_unit_starts_inside_the_container(nspawn_systemd: NspawnSystemd) -> None:
    unit = nspawn_systemd.unit_name("sleeper")
    nspawn_systemd.install_unit(unit, "[Service]\nExecStart=/bin/sleep infinity\n")

    nspawn_systemd.run("systemctl", "start", unit)
    state = nspawn_systemd.systemctl_show(unit, "ActiveState", "SubState", "MainPID")
    nspawn_systemd.remove_unit(unit)

    assert state["ActiveState"] == "active"
    assert state["SubState"] == "running"
    assert int(state["MainPID"]) > 1


def test_a_stopped_container_leaves_no_cgroup_or_process(
    nspawn_factory: ContainerFactory,
) -> None:
    container = nspawn_factory()
    cgroups = container.cgroup_dirs
    assert all(p.is_dir() for p in cgroups)

    container.stop()

    assert not container.running
    assert not any(p.exists() for p in cgroups)
    assert not Path(f"/proc/{container.init_pid}").exists()
