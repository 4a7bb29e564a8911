"""FilesystemProbe: mountinfo parsing, exclusions, statvfs arithmetic and failures."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from agent.config import FilesystemProbeConfig
from agent.errors import ProbeError
from agent.model import LabelSet, labelset
from agent.probes.filesystem import FilesystemProbe

from .fakes import Closing, by_series, statvfs_result, write_tree

DEFAULTS = FilesystemProbeConfig()

MOUNTINFO = """\
21 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
22 21 0:20 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
23 21 8:17 / /mnt/my\\040disk rw,relatime shared:30 master:2 propagate_from:2 - xfs /dev/sdb1 rw
24 21 8:33 / /srv/ro ro,relatime - ext4 /dev/sdc1 ro
25 21 8:49 / /srv/flagged ro,relatime - ext4 /dev/sdd1 rw
26 21 0:50 / /var/lib/docker/overlay2/abc/merged rw,relatime - overlay overlay rw,lowerdir=/l
27 21 8:65 / /var/lib/docker/volumes/data rw,relatime - ext4 /dev/sde1 rw
28 21 8:1 / / ro,relatime shared:1 - ext4 /dev/sda1 ro
29 21 0:60 / /srv/nfs rw,relatime - nfs4 server:/export rw,vers=4.2
30 21 8:81 / /srv/secret rw,relatime - ext4 /dev/sdf1 rw
31 21 0:61 / /empty rw,relatime - tmpfs tmpfs rw,size=0k
32 21 0:62 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw
33 21 7:0 / /snap/core/17200 ro,nodev,relatime - squashfs /dev/loop0 ro
"""


def _fs(mountpoint: str, device: str, fstype: str) -> LabelSet:
    return labelset(mountpoint=mountpoint, device=device, fstype=fstype)


class _FakeStatvfs:
    """Answers statvfs from a table and records what was asked."""

    def __init__(self, table: dict[str, os.statvfs_result | OSError]) -> None:
        self.table = table
        self.calls: list[str] = []

    def __call__(self, path: str) -> os.statvfs_result:
        self.calls.append(path)
        answer = self.table[path]
        if isinstance(answer, OSError):
            raise answer
        return answer


PLAIN = statvfs_result(blocks=1000, bfree=300, bavail=200, files=100, ffree=25)


@pytest.fixture
def statvfs() -> _FakeStatvfs:
    return _FakeStatvfs(
        {
            "/": PLAIN,
            "/mnt/my disk": PLAIN,
            "/srv/ro": PLAIN,
            "/srv/flagged": statvfs_result(blocks=10, bfree=10, bavail=10, flag=os.ST_RDONLY),
            "/srv/nfs": OSError(errno.ESTALE, "Stale file handle"),
            "/srv/secret": PermissionError(errno.EACCES, "Permission denied"),
            "/empty": statvfs_result(blocks=0, bfree=0, bavail=0, files=0, ffree=0),
        }
    )


def _probe(proc: Path, statvfs: _FakeStatvfs) -> FilesystemProbe:
    return FilesystemProbe(
        proc=proc,
        exclude_fstypes=DEFAULTS.exclude_fstypes,
        exclude_mountpoints=DEFAULTS.exclude_mountpoints,
        statvfs=statvfs,
    )


@pytest.mark.asyncio
async def test_every_mount_from_a_known_mountinfo(
    tmp_path: Path, statvfs: _FakeStatvfs, closing: Closing, caplog: pytest.LogCaptureFixture
) -> None:
    write_tree(tmp_path, {"self/mountinfo": MOUNTINFO})
    probe = closing(_probe(tmp_path, statvfs))

    with caplog.at_level(logging.DEBUG, logger="agent.probes.filesystem"):
        values = by_series(await probe.sample())

    plain: dict[
        str, object
    ] = {  # 1000 blocks of 4 KiB, 300 free, 200 available; 100 inodes, 25 free
        "size_bytes": 4_096_000,
        "avail_bytes": 819_200,
        "used_ratio": pytest.approx(700 / 900),
        "inodes_used_ratio": 0.75,
    }
    expected: dict[tuple[str, LabelSet], object] = {}
    mounts: list[tuple[LabelSet, float, dict[str, object]]] = [
        (_fs("/", "/dev/sda1", "ext4"), 0.0, plain),
        (_fs("/mnt/my disk", "/dev/sdb1", "xfs"), 0.0, plain),
        (_fs("/srv/ro", "/dev/sdc1", "ext4"), 1.0, plain),
        # A read-only mount of a writable filesystem (systemd's ProtectSystem=strict gives
        # the agent such a view of every mount): the filesystem is not read-only.
        (
            _fs("/srv/flagged", "/dev/sdd1", "ext4"),
            0.0,
            {
                "size_bytes": 40_960,
                "avail_bytes": 40_960,
                "used_ratio": 0.0,
                "inodes_used_ratio": 0.0,
            },
        ),
        (
            _fs("/empty", "tmpfs", "tmpfs"),
            0.0,
            {"size_bytes": 0, "avail_bytes": 0, "used_ratio": 0.0, "inodes_used_ratio": 0.0},
        ),
    ]
    for labels, readonly, figures in mounts:
        for name, value in figures.items():
            expected[(f"nodemedic_filesystem_{name}", labels)] = value
        expected[("nodemedic_filesystem_readonly", labels)] = readonly
    assert values == expected
    # Excluded mounts are never statvfs'd: a hung one cannot hang the probe.
    assert statvfs.calls == [
        "/",
        "/mnt/my disk",
        "/srv/ro",
        "/srv/flagged",
        "/srv/nfs",
        "/srv/secret",
        "/empty",
    ]
    assert any("skipping /srv/nfs" in message for message in caplog.messages)
    assert any("skipping /srv/secret" in message for message in caplog.messages)


@pytest.mark.asyncio
async def test_later_mount_on_the_same_path_hides_the_earlier(
    tmp_path: Path, closing: Closing
) -> None:
    mountinfo = (
        "40 1 8:1 / /data rw - ext4 /dev/sdg1 rw\n"
        "41 40 8:2 / /data rw - xfs /dev/sdh1 rw\n"
        "42 1 8:3 / /more\\134dir\\011tab rw - ext4 /dev/disk\\040one rw\n"
    )
    write_tree(tmp_path, {"self/mountinfo": mountinfo})
    statvfs = _FakeStatvfs({"/data": PLAIN, "/more\\dir\ttab": PLAIN})
    probe = closing(FilesystemProbe(proc=tmp_path, statvfs=statvfs))

    values = by_series(await probe.sample())

    assert {labels for _, labels in values} == {
        _fs("/data", "/dev/sdh1", "xfs"),
        _fs("/more\\dir\ttab", "/dev/disk one", "ext4"),
    }


@pytest.mark.asyncio
async def test_undecodable_mountpoint_reaches_statvfs_intact_and_labels_stay_utf8(
    tmp_path: Path, closing: Closing
) -> None:
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "mountinfo").write_bytes(
        b"50 1 8:1 / /mnt/caf\xe9 rw - ext4 /dev/sdi1 rw\n"
    )
    seen: list[bytes] = []

    def statvfs(path: str) -> os.statvfs_result:
        seen.append(os.fsencode(path))
        return PLAIN

    probe = closing(FilesystemProbe(proc=tmp_path, statvfs=statvfs))

    samples = await probe.sample()

    assert seen == [b"/mnt/caf\xe9"]
    assert {sample.label_dict["mountpoint"] for sample in samples} == {"/mnt/caf\ufffd"}


@pytest.mark.asyncio
async def test_malformed_mountinfo_is_a_probe_error(tmp_path: Path, closing: Closing) -> None:
    write_tree(tmp_path, {"self/mountinfo": "21 1 8:1 / / rw,relatime shared:1 ext4 /dev/sda1\n"})
    probe = closing(FilesystemProbe(proc=tmp_path, statvfs=_FakeStatvfs({})))

    with pytest.raises(ProbeError, match=r"^probe filesystem: cannot parse .*/self/mountinfo: "):
        await probe.sample()


@pytest.mark.asyncio
async def test_a_filesystem_turning_read_only_is_seen_on_the_next_run(
    tmp_path: Path, closing: Closing
) -> None:
    line = "21 1 8:1 / /data rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro\n"
    other = "22 1 8:2 / /srv rw,relatime - xfs /dev/sdb1 rw\n"
    write_tree(tmp_path, {"self/mountinfo": line + other})
    statvfs = _FakeStatvfs({"/data": PLAIN, "/srv": PLAIN})
    probe = closing(FilesystemProbe(proc=tmp_path, statvfs=statvfs))
    readonly = "nodemedic_filesystem_readonly"
    data = _fs("/data", "/dev/sda1", "ext4")

    first = by_series(await probe.sample())
    # ext4 after an error: the superblock goes read-only, the other line stays as it was.
    write_tree(tmp_path, {"self/mountinfo": line.replace(" rw,errors", " ro,errors") + other})
    second = by_series(await probe.sample())
    write_tree(tmp_path, {"self/mountinfo": other})
    third = by_series(await probe.sample())

    assert first[(readonly, data)] == 0.0
    assert second[(readonly, data)] == 1.0
    assert second[(readonly, _fs("/srv", "/dev/sdb1", "xfs"))] == 0.0
    assert (readonly, data) not in third  # unmounted
