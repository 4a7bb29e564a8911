"""Filesystem space, inodes and read-only state: ``/proc/self/mountinfo`` plus ``statvfs``.

One series per mount point. A mount point that appears twice with the same device
(a bind mount of itself, say) is reported once, from its first entry; a later mount
of a different device on the same path hides the earlier one, and since ``statvfs``
sees only the topmost mount, only that one is reported.
"""

from __future__ import annotations

__all__ = ["FilesystemProbe", "MountEntry", "parse_mountinfo"]

import logging
import os
import re
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.model import Sample
from agent.probes.base import BlockingProbe, Clock, parse_error, read_text

log = logging.getLogger(__name__)

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")

StatVfs = Callable[[str], os.statvfs_result]
"""``os.statvfs`` or a test's stand-in."""


@dataclass(frozen=True, slots=True)
class MountEntry:
    """The fields of one mountinfo line the probe uses, unescaped.

    Attributes:
        mountpoint: where it is mounted.
        device: the mount source (``/dev/sda1``, ``server:/export``, ``tmpfs``).
        fstype: the filesystem type (``ext4``, ``nfs4``, ``fuse.sshfs``).
        options: the per-mount options (field 6), e.g. ``("rw", "relatime")``.
        super_options: the filesystem's own (superblock) options, after the source.
    """

    mountpoint: str
    device: str
    fstype: str
    options: tuple[str, ...]
    super_options: tuple[str, ...] = ()

    @property
    def readonly(self) -> bool:
        """True when the filesystem itself is read-only (its superblock options say ``ro``).

        A read-only *mount* of a writable filesystem is not: systemd's sandboxing
        (``ProtectSystem=strict``) makes every mount read-only in the agent's own view,
        while an ext4 remounted read-only after an error, or ``mount -o remount,ro``,
        marks the superblock. Without superblock options the per-mount flag decides.
        """
        if self.super_options:
            return "ro" in self.super_options
        return "ro" in self.options


def parse_mountinfo(path: Path, text: str) -> Iterator[MountEntry]:
    """Parse ``/proc/<pid>/mountinfo`` (see proc(5)).

    Handles the variable number of optional fields before the ``-`` separator and the
    kernel's octal escapes (``\\040`` for a space) in paths and sources.

    Raises:
        ValueError: naming ``path`` and the line, when a line is malformed.
    """
    for line in text.splitlines():
        if not line:
            continue
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
            fstype = fields[separator + 1]
            source = fields[separator + 2] if len(fields) > separator + 2 else ""
            super_options = fields[separator + 3] if len(fields) > separator + 3 else ""
        except (ValueError, IndexError):
            raise parse_error(path, f"bad mountinfo line {line!r}") from None
        yield MountEntry(
            mountpoint=_unescape(fields[4]),
            device=_unescape(source),
            fstype=_unescape(fstype),
            options=tuple(fields[5].split(",")),
            super_options=tuple(super_options.split(",")) if super_options else (),
        )


def _unescape(field: str) -> str:
    if "\\" not in field:
        return field
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


class FilesystemProbe(BlockingProbe):
    """Emits size, available bytes, used ratio (as df), inode use and read-only per mount.

    A mount whose ``statvfs`` fails (permission denied, a stale NFS handle) is left
    out of this run and logged at debug; it does not fail the probe. A ``statvfs``
    that hangs does, through the run's timeout.

    Args:
        interval: seconds between runs.
        timeout: seconds one run may take.
        proc: where procfs is mounted; mounts are read from ``<proc>/self/mountinfo``.
        exclude_fstypes: filesystem types to leave out.
        exclude_mountpoints: regular expression (``re.search``) for mount points to leave out.
        statvfs: the ``statvfs`` call.
        clock: monotonic seconds.

    Raises:
        re.error: when ``exclude_mountpoints`` is not a valid regular expression.
    """

    def __init__(
        self,
        *,
        interval: float = 30.0,
        timeout: float = 10.0,
        proc: Path = Path("/proc"),
        exclude_fstypes: Collection[str] = (),
        exclude_mountpoints: str | None = None,
        statvfs: StatVfs = os.statvfs,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(name="filesystem", interval=interval, timeout=timeout, clock=clock)
        self._mountinfo = proc / "self" / "mountinfo"
        self._exclude_fstypes = frozenset(exclude_fstypes)
        self._exclude_mountpoints = re.compile(exclude_mountpoints) if exclude_mountpoints else None
        self._statvfs = statvfs
        self._parsed: dict[str, MountEntry] = {}  # mountinfo line -> its entry, last run

    def collect(self) -> list[Sample]:
        """List the mounts, then ``statvfs`` each one that is not excluded."""
        samples: list[Sample] = []
        for mount in self._mounts():
            try:
                stat = self._statvfs(mount.mountpoint)
            except OSError as err:
                log.debug("probe filesystem: skipping %s: %s", mount.mountpoint, err)
                continue
            samples.extend(_samples(mount, stat))
        return samples

    def _mounts(self) -> list[MountEntry]:
        visible: dict[str, MountEntry] = {}
        for mount in self._parse(read_text(self._mountinfo)):
            current = visible.get(mount.mountpoint)
            if current is None or current.device != mount.device:
                visible[mount.mountpoint] = mount
        return [mount for mount in visible.values() if not self._excluded(mount)]

    def _parse(self, text: str) -> list[MountEntry]:
        """``parse_mountinfo``, reusing the entry of a line seen unchanged in the last run.

        The table is read every run (a superblock turning read-only after an error
        changes a line, and no event announces it), but it rarely changes: parsing a
        line again would give the same entry.
        """
        known = self._parsed
        parsed: dict[str, MountEntry] = {}
        mounts: list[MountEntry] = []
        for line in text.splitlines():
            mount = known.get(line)
            if mount is None:
                entries = list(parse_mountinfo(self._mountinfo, line))
                if not entries:
                    continue
                mount = entries[0]
            parsed[line] = mount
            mounts.append(mount)
        self._parsed = parsed
        return mounts

    def _excluded(self, mount: MountEntry) -> bool:
        if mount.fstype in self._exclude_fstypes:
            return True
        pattern = self._exclude_mountpoints
        return pattern is not None and pattern.search(mount.mountpoint) is not None


def _samples(mount: MountEntry, stat: os.statvfs_result) -> list[Sample]:
    block = stat.f_frsize or stat.f_bsize
    size = stat.f_blocks * block
    used = (stat.f_blocks - stat.f_bfree) * block
    avail = stat.f_bavail * block
    used_ratio = used / (used + avail) if size > 0 and used + avail > 0 else 0.0
    inodes_ratio = (stat.f_files - stat.f_ffree) / stat.f_files if stat.f_files > 0 else 0.0
    # Not statvfs's ST_RDONLY: it also reports a read-only mount of a writable filesystem.
    readonly = mount.readonly
    labels = {
        "mountpoint": _label(mount.mountpoint),
        "device": _label(mount.device),
        "fstype": _label(mount.fstype),
    }
    return [
        Sample.of("nodemedic_filesystem_size_bytes", size, **labels),
        Sample.of("nodemedic_filesystem_avail_bytes", avail, **labels),
        Sample.of("nodemedic_filesystem_used_ratio", used_ratio, **labels),
        Sample.of("nodemedic_filesystem_inodes_used_ratio", inodes_ratio, **labels),
        Sample.of("nodemedic_filesystem_readonly", 1.0 if readonly else 0.0, **labels),
    ]


def _label(text: str) -> str:
    # Paths are read with surrogateescape so statvfs gets the exact bytes; a label
    # must be valid UTF-8 for /metrics and MQTT, so undecodable bytes become U+FFFD.
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
