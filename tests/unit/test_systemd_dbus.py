"""SystemdClient parts that need no systemd: object paths and a bus that is not there."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import AgentError, SystemdError
from agent.systemd_dbus import SystemdClient, unit_name_of_path, unit_path


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("nginx.service", "/org/freedesktop/systemd1/unit/nginx_2eservice"),
        ("getty@tty1.service", "/org/freedesktop/systemd1/unit/getty_40tty1_2eservice"),
        ("1st.service", "/org/freedesktop/systemd1/unit/_31st_2eservice"),
        ("dev-sda\\x2d1.device", "/org/freedesktop/systemd1/unit/dev_2dsda_5cx2d1_2edevice"),
        ("", "/org/freedesktop/systemd1/unit/_"),
    ],
)
def test_unit_paths_are_encoded_as_systemd_does(name: str, path: str) -> None:
    assert unit_path(name) == path


@given(st.text(min_size=1, max_size=60))
def test_a_unit_name_survives_the_round_trip_through_its_path(name: str) -> None:
    assert unit_name_of_path(unit_path(name)) == name.encode("utf-8", "replace").decode()


def test_a_path_that_is_not_a_units_has_no_unit_name() -> None:
    assert unit_name_of_path("/org/freedesktop/systemd1") is None
    assert unit_name_of_path("/org/freedesktop/systemd1/unit/bad_zz") is None


@pytest.mark.asyncio
async def test_connecting_to_a_missing_bus_is_a_systemd_error_naming_the_address(
    tmp_path: Path,
) -> None:
    bus = f"unix:path={tmp_path}/none"

    with pytest.raises(SystemdError, match=f"cannot connect to {bus}") as raised:
        async with SystemdClient(bus_address=bus, timeout=2.0):
            pass

    assert isinstance(raised.value, AgentError)


def test_a_non_positive_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="timeout must be positive"):
        SystemdClient(timeout=0)
