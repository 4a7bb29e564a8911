"""NetworkProbe: /sys/class/net state and counters, exclusions, error rate."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import NetworkProbeConfig
from agent.errors import ProbeError
from agent.model import LabelSet, labelset
from agent.probes.network import NetworkProbe

from .fakes import Closing, ManualClock, by_series, write_tree

DEFAULT_EXCLUDES = NetworkProbeConfig().exclude_interfaces
STATS = ("rx_bytes", "tx_bytes", "rx_errors", "tx_errors", "rx_dropped", "tx_dropped")


def _iface(
    sys: Path, name: str, operstate: str, *, carrier: str | None = None, **stats: int
) -> None:
    files = {f"class/net/{name}/operstate": f"{operstate}\n"}
    if carrier is not None:
        files[f"class/net/{name}/carrier"] = f"{carrier}\n"
    for stat in STATS:
        files[f"class/net/{name}/statistics/{stat}"] = f"{stats.get(stat, 0)}\n"
    write_tree(sys, files)


def _by_interface(values: dict[tuple[str, LabelSet], float]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for (metric, labels), value in values.items():
        short = metric.removeprefix("nodemedic_network_")
        table.setdefault(dict(labels)["interface"], {})[short] = value
    return table


@pytest.fixture
def sys_tree(tmp_path: Path) -> Path:
    _iface(tmp_path, "eth0", "up", carrier="1", rx_bytes=1000, tx_bytes=2000,
           rx_errors=10, tx_errors=5, rx_dropped=100, tx_dropped=1)  # fmt: skip
    _iface(tmp_path, "eth1", "down", rx_errors=50)  # reading carrier would fail with EINVAL
    _iface(tmp_path, "tun0", "unknown", carrier="1")
    _iface(tmp_path, "dummy0", "unknown", carrier="0")
    _iface(tmp_path, "lo", "unknown", carrier="1")
    _iface(tmp_path, "veth1a2b", "up", carrier="1")
    return tmp_path


@pytest.mark.asyncio
async def test_state_and_counters_of_every_interface_not_excluded(
    sys_tree: Path, closing: Closing
) -> None:
    probe = closing(NetworkProbe(sys=sys_tree, exclude_interfaces=DEFAULT_EXCLUDES))

    table = _by_interface(by_series(await probe.sample()))

    assert set(table) == {"eth0", "eth1", "tun0", "dummy0"}
    assert {name: row["up"] for name, row in table.items()} == {
        "eth0": 1.0,
        "eth1": 0.0,
        "tun0": 1.0,
        "dummy0": 0.0,
    }
    assert table["eth0"] == {
        "up": 1.0,
        "receive_bytes_total": 1000,
        "transmit_bytes_total": 2000,
        "receive_errors_total": 10,
        "transmit_errors_total": 5,
        "receive_drops_total": 100,
        "transmit_drops_total": 1,
        "errors_per_second": 0.0,
    }


@pytest.mark.asyncio
async def test_errors_per_second_over_the_interval(sys_tree: Path, closing: Closing) -> None:
    clock = ManualClock()
    probe = closing(NetworkProbe(sys=sys_tree, exclude_interfaces=DEFAULT_EXCLUDES, clock=clock))
    await probe.sample()
    clock.advance(5)
    _iface(sys_tree, "eth0", "up", carrier="1", rx_bytes=9000, tx_bytes=2000,
           rx_errors=20, tx_errors=5, rx_dropped=140, tx_dropped=1)  # fmt: skip
    _iface(sys_tree, "eth1", "down", rx_errors=3)  # counters reset by a driver reload
    _iface(sys_tree, "wlan0", "up", rx_errors=500)  # appeared since the last run

    table = _by_interface(by_series(await probe.sample()))

    assert table["eth0"]["errors_per_second"] == pytest.approx(10.0)  # 50 in 5 s
    assert table["eth1"]["errors_per_second"] == 0.0
    assert table["wlan0"]["errors_per_second"] == 0.0
    assert table["tun0"]["errors_per_second"] == 0.0


@pytest.mark.asyncio
async def test_unknown_state_without_readable_carrier_is_down(
    tmp_path: Path, closing: Closing
) -> None:
    _iface(tmp_path, "ppp0", "unknown")
    probe = closing(NetworkProbe(sys=tmp_path))

    values = by_series(await probe.sample())

    assert values[("nodemedic_network_up", labelset(interface="ppp0"))] == 0.0


@pytest.mark.asyncio
async def test_malformed_counter_is_a_probe_error(tmp_path: Path, closing: Closing) -> None:
    _iface(tmp_path, "eth0", "up")
    write_tree(tmp_path, {"class/net/eth0/statistics/rx_errors": "lots\n"})
    probe = closing(NetworkProbe(sys=tmp_path))

    with pytest.raises(
        ProbeError, match=r"^probe network: cannot parse .*/eth0/statistics/rx_errors: "
    ):
        await probe.sample()
