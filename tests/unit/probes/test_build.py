"""build_probes: one probe per enabled entry, with the configured timing and exclusions."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ProbesConfig
from agent.probes import build_probes
from agent.probes.base import sample_once
from agent.probes.catalog import PROBE_NAMES

from .fakes import Closing, write_tree


def test_every_probe_is_built_by_default(closing: Closing) -> None:
    probes = [closing(probe) for probe in build_probes(ProbesConfig())]

    assert [probe.name for probe in probes] == list(PROBE_NAMES)
    assert {probe.name: probe.interval for probe in probes}["filesystem"] == 30.0


def test_disabled_probes_are_not_built_and_timing_comes_from_config(closing: Closing) -> None:
    config = ProbesConfig.model_validate(
        {
            "cpu": {"enabled": False},
            "sensors": {"enabled": False},
            "memory": {"interval": "5s"},
            "clock": {"interval": "2m", "timeout": "3s"},
        }
    )

    probes = {probe.name: closing(probe) for probe in build_probes(config)}

    assert list(probes) == [name for name in PROBE_NAMES if name not in ("cpu", "sensors")]
    assert (probes["memory"].interval, probes["memory"].timeout) == (5.0, 5.0)
    assert (probes["clock"].interval, probes["clock"].timeout) == (120.0, 3.0)
    assert (probes["filesystem"].interval, probes["filesystem"].timeout) == (30.0, 10.0)


@pytest.mark.asyncio
async def test_built_probes_read_the_given_trees_with_configured_exclusions(
    tmp_path: Path, closing: Closing
) -> None:
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    data = tmp_path / "data"
    data.mkdir()
    write_tree(
        proc,
        {
            "self/mountinfo": (
                f"1 0 8:1 / {data} rw - ext4 /dev/sda1 rw\n"
                "2 0 0:5 / /proc rw - proc proc rw\n"
                f"3 0 8:2 / {tmp_path} rw - xfs /dev/sdb1 rw\n"
            ),
            "diskstats": "   8 0 sda 1 0 8 1 1 0 8 1 0 2 2\n   8 1 sda1 1 0 8 1 1 0 8 1 0 2 2\n",
            "uptime": "100.0 0\n",
        },
    )
    header = "Inter-| Receive | Transmit\n face |bytes ... |bytes ...\n"
    counters = " 0" * 16
    # lo is real (its up state comes from the kernel); eth1 is excluded before that.
    write_tree(proc, {"net/dev": f"{header}    lo:{counters}\n  eth1:{counters}\n"})
    config = ProbesConfig.model_validate(
        {
            "filesystem": {"exclude_mountpoints": f"^{tmp_path}$"},
            "network": {"exclude_interfaces": "^eth1$"},
        }
    )

    probes = {probe.name: closing(probe) for probe in build_probes(config, proc=proc, sys=sys)}

    mounts = {s.label_dict["mountpoint"] for s in await sample_once(probes["filesystem"])}
    devices = {s.label_dict["device"] for s in await sample_once(probes["diskio"])}
    interfaces = {s.label_dict["interface"] for s in await sample_once(probes["network"])}
    assert mounts == {str(data)}  # /proc by its fstype, tmp_path by the configured pattern
    assert devices == {"sda"}  # partitions by the default pattern
    assert interfaces == {"lo"}  # the configured pattern replaces the default
