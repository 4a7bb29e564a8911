"""The detection and remediation latency benches' machinery, a few rounds each.

Real services throughout: Mosquitto, systemd booted in nspawn, a ``nodemedic run`` process,
a loop-mounted ext4 image. Only outcomes are asserted (every round saw its event, the
engine restarted the unit each time, the disk is gone afterwards), never timings.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bench.detection_latency import disk_rounds, unit_rounds
from bench.latency import loop_disk, mosquitto
from bench.remediation_latency import rounds_of

pytestmark = [pytest.mark.mosquitto, pytest.mark.systemd, pytest.mark.root]


def _loop_devices_of(image_dir: Path) -> str:
    listed = subprocess.run(
        ["/usr/sbin/losetup", "--all"], check=True, capture_output=True, text=True
    )
    return "\n".join(line for line in listed.stdout.splitlines() if str(image_dir) in line)


def test_every_unit_failure_and_disk_fill_reaches_the_subscriber(tmp_path: Path) -> None:
    with mosquitto(tmp_path) as broker:
        units = unit_rounds(tmp_path / "units", broker, 3)
        disk = disk_rounds(tmp_path / "disk", broker, 2, 0.2)

    assert units["unit failed -> firing"]["n"] == 3
    assert units["unit exit -> firing"]["n"] == 3
    assert units["unit active -> resolved"]["n"] == 2
    assert disk["disk full -> firing (probe every 0.2s)"]["n"] == 2


def test_the_engine_restarts_the_crashed_unit_every_round(tmp_path: Path) -> None:
    with mosquitto(tmp_path) as broker:
        # rounds_of raises unless each round's unit is active under a new invocation that
        # systemd itself did not start (NRestarts 0), with a succeeded run on the subscriber.
        figures = rounds_of(tmp_path / "units", broker, 2)

    assert figures["crash -> unit active (engine restart)"]["n"] == 2
    assert figures["crash -> succeeded event received"]["n"] == 2


def test_the_loop_disk_is_unmounted_and_detached_even_when_the_bench_fails() -> None:
    seen: list[Path] = []

    def fails_inside_the_mount() -> None:
        with loop_disk(8) as mnt:
            seen.append(mnt)
            assert os.path.ismount(mnt)
            assert _loop_devices_of(mnt.parent)
            (mnt / "busy").write_bytes(b"x")
            raise RuntimeError("bench failed")

    with pytest.raises(RuntimeError, match="bench failed"):
        fails_inside_the_mount()

    mnt = seen[0]
    assert not os.path.ismount(mnt)
    assert _loop_devices_of(mnt.parent) == ""
    assert not mnt.parent.exists()
