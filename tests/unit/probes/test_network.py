"""NetworkProbe: /proc/net/dev counters, up state by ioctl, exclusions, error rate.

The up state comes from the kernel (``SIOCGIFFLAGS``), so these tests build the
interfaces they read in a network namespace of their own (veth pairs and dummy
devices, up and down) and run the probe inside it; the counters come from a fixture
``net/dev`` where a test needs exact values.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from agent.config import NetworkProbeConfig
from agent.errors import ProbeError
from agent.model import LabelSet, Sample, labelset
from agent.probes.network import NetworkProbe

from .fakes import Closing, ManualClock, by_series, write_tree
from .netns import NetworkNamespace, network_namespace

pytestmark = pytest.mark.root

DEFAULT_EXCLUDES = NetworkProbeConfig().exclude_interfaces
HEADER = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|"
    "bytes    packets errs drop fifo colls carrier compressed\n"
)


def _line(
    name: str,
    *,
    rx_bytes: int = 0,
    rx_errors: int = 0,
    rx_dropped: int = 0,
    tx_bytes: int = 0,
    tx_errors: int = 0,
    tx_dropped: int = 0,
) -> str:
    rx = (rx_bytes, 7, rx_errors, rx_dropped, 0, 0, 0, 0)
    tx = (tx_bytes, 9, tx_errors, tx_dropped, 0, 0, 0, 0)
    return f"{name:>6s}:" + "".join(f" {value:7d}" for value in (*rx, *tx)) + "\n"


def _write_dev(proc: Path, *lines: str) -> None:
    write_tree(proc, {"net/dev": HEADER + "".join(lines)})


def _by_interface(values: dict[tuple[str, LabelSet], float]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for (metric, labels), value in values.items():
        short = metric.removeprefix("nodemedic_network_")
        table.setdefault(dict(labels)["interface"], {})[short] = value
    return table


def _sample_in(namespace: NetworkNamespace, probe: NetworkProbe) -> Sequence[Sample]:
    """One run of the probe from a thread inside the namespace."""
    return namespace.run(lambda: asyncio.run(probe.sample()))


@pytest.fixture
def lab() -> Iterator[NetworkNamespace]:
    """eth0 up (a veth with its peer up), eth1 an ifb left down, dummy0 (an ifb) and lo
    up (both "unknown" with carrier), tun0 up with no process attached (no carrier),
    veth1a2b up, veth9 up with its peer down (no carrier)."""
    with network_namespace() as namespace:
        ip = namespace.ip
        ip("link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
        ip("link", "add", "eth1", "type", "ifb")
        ip("link", "add", "dummy0", "type", "ifb")
        ip("tuntap", "add", "tun0", "mode", "tun")
        ip("link", "add", "veth1a2b", "type", "veth", "peer", "name", "peer1")
        ip("link", "add", "veth9", "type", "veth", "peer", "name", "peer9")
        for name in ("lo", "eth0", "peer0", "dummy0", "tun0", "veth1a2b", "peer1", "veth9"):
            ip("link", "set", name, "up")
        yield namespace


@pytest.mark.asyncio
async def test_counters_of_every_interface_not_excluded(
    lab: NetworkNamespace, tmp_path: Path, closing: Closing
) -> None:
    _write_dev(
        tmp_path,
        _line("lo", rx_bytes=5),
        _line(
            "eth0",
            rx_bytes=1000,
            tx_bytes=2000,
            rx_errors=10,
            tx_errors=5,
            rx_dropped=100,
            tx_dropped=1,
        ),
        _line("eth1", rx_errors=50),
        _line("dummy0"),
        _line("tun0"),
        _line("veth1a2b"),
    )
    probe = closing(NetworkProbe(proc=tmp_path, exclude_interfaces=DEFAULT_EXCLUDES))

    table = _by_interface(by_series(_sample_in(lab, probe)))

    assert set(table) == {"eth0", "eth1", "dummy0", "tun0"}
    assert {name: row["up"] for name, row in table.items()} == {
        "eth0": 1.0,
        "eth1": 0.0,
        "dummy0": 1.0,
        "tun0": 0.0,
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


def test_up_state_is_operstate_up_or_unknown_with_carrier(
    lab: NetworkNamespace, closing: Closing
) -> None:
    probe = closing(NetworkProbe(proc=Path("/proc/thread-self")))

    up = {
        dict(labels)["interface"]: value
        for (metric, labels), value in by_series(_sample_in(lab, probe)).items()
        if metric == "nodemedic_network_up"
    }

    # The rule as iproute2 reports each interface's operstate and flags (over netlink).
    links = lab.links()
    assert up == {
        name: float(
            link["operstate"] == "UP"
            or (link["operstate"] == "UNKNOWN" and "LOWER_UP" in link["flags"])
        )
        for name, link in links.items()
    }
    assert up == {
        "lo": 1.0, "eth0": 1.0, "peer0": 1.0, "eth1": 0.0, "dummy0": 1.0, "tun0": 0.0,
        "veth1a2b": 1.0, "peer1": 1.0, "veth9": 0.0, "peer9": 0.0,
    }  # fmt: skip


def test_an_interface_coming_up_and_going_down_is_seen(
    lab: NetworkNamespace, closing: Closing
) -> None:
    probe = closing(NetworkProbe(proc=Path("/proc/thread-self")))
    veth9 = labelset(interface="veth9")

    def up() -> float:
        return by_series(_sample_in(lab, probe))[("nodemedic_network_up", veth9)]

    assert up() == 0.0
    lab.ip("link", "set", "peer9", "up")  # carrier on veth9 (the kernel applies it within ~1 s)
    assert _eventually(up, 1.0)
    lab.ip("link", "set", "veth9", "down")
    assert up() == 0.0


def test_the_real_counters_of_the_namespace(lab: NetworkNamespace, closing: Closing) -> None:
    probe = closing(NetworkProbe(proc=Path("/proc/thread-self")))
    lab.run(_send_datagrams)

    values = by_series(_sample_in(lab, probe))

    # No further traffic in the namespace since the probe's run.
    stats = {link["ifname"]: link["stats64"] for link in json.loads(lab.ip("-j", "-s", "link"))}
    lo = labelset(interface="lo")
    assert values[("nodemedic_network_receive_bytes_total", lo)] == stats["lo"]["rx"]["bytes"]
    assert values[("nodemedic_network_transmit_bytes_total", lo)] == stats["lo"]["tx"]["bytes"]
    assert values[("nodemedic_network_receive_bytes_total", lo)] > 0


def test_same_interfaces_as_sysfs_on_this_host(closing: Closing) -> None:
    probe = closing(NetworkProbe())

    table = _by_interface(by_series(asyncio.run(probe.sample())))

    assert set(table) == {path.name for path in Path("/sys/class/net").iterdir()}
    assert probe.runs_inline


@pytest.mark.asyncio
async def test_errors_per_second_over_the_interval(
    lab: NetworkNamespace, tmp_path: Path, closing: Closing
) -> None:
    clock = ManualClock()
    _write_dev(tmp_path, _line("eth0", rx_errors=10, rx_dropped=100), _line("eth1", rx_errors=50))
    probe = closing(NetworkProbe(proc=tmp_path, clock=clock))
    _sample_in(lab, probe)
    clock.advance(5)
    _write_dev(
        tmp_path,
        _line("eth0", rx_bytes=9000, rx_errors=20, rx_dropped=140),
        _line("eth1", rx_errors=3),  # counters reset by a driver reload
        _line("dummy0", rx_errors=500),  # appeared since the last run
    )

    table = _by_interface(by_series(_sample_in(lab, probe)))

    assert table["eth0"]["errors_per_second"] == pytest.approx(10.0)  # 50 in 5 s
    assert table["eth1"]["errors_per_second"] == 0.0
    assert table["dummy0"]["errors_per_second"] == 0.0


def test_an_interface_gone_since_the_counters_were_read_is_left_out(
    lab: NetworkNamespace, tmp_path: Path, closing: Closing
) -> None:
    _write_dev(tmp_path, _line("eth0"), _line("gone0", rx_bytes=1))
    probe = closing(NetworkProbe(proc=tmp_path))

    table = _by_interface(by_series(_sample_in(lab, probe)))

    assert set(table) == {"eth0"}


@pytest.mark.parametrize(
    "line",
    [" eth0: 1 2 3\n", " eth0: 1 2 3 4 5 6 7 lots 9 10 11 12 13 14 15 16\n", "eth0 1 2\n"],
)
def test_malformed_net_dev_is_a_probe_error(
    lab: NetworkNamespace, tmp_path: Path, closing: Closing, line: str
) -> None:
    _write_dev(tmp_path, line)
    probe = closing(NetworkProbe(proc=tmp_path))

    with pytest.raises(ProbeError, match=r"^probe network: cannot parse .*/net/dev: .*eth0"):
        _sample_in(lab, probe)


@pytest.mark.asyncio
async def test_missing_net_dev_is_a_probe_error(tmp_path: Path, closing: Closing) -> None:
    probe = closing(NetworkProbe(proc=tmp_path))

    with pytest.raises(ProbeError, match=r"^probe network: cannot read .*/net/dev: "):
        await probe.sample()


def _send_datagrams() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for _ in range(3):
            sender.sendto(b"x" * 100, ("127.0.0.1", 9))


def _eventually(read: Callable[[], float], wanted: float, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if read() == wanted:
            return True
        time.sleep(0.1)
    return False
