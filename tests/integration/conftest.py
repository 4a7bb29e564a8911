"""Fixtures for the integration tests: a real filesystem of their own, the Debian package."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.fixture
def scratch_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB ext4 filesystem on a loop device, mounted under tmp_path."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a loop device and must run as root (CI does)")
    image = tmp_path / "scratch.img"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with image.open("wb") as f:
        f.truncate(16 * 1024 * 1024)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", str(image)], check=True
    )
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


DEB_BUILD = REPO / "packaging" / "deb" / "build"


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Debian package ``make deb`` builds, built once per session.

    About 45 s with a warm pip cache (.cache/pip-deb) on an idle machine, two to five
    minutes cold or on busy cores. ``NODEMEDIC_DEB=path/to.deb`` tests a package built
    before (``make deb``) instead.
    """
    prebuilt = os.environ.get("NODEMEDIC_DEB")
    if prebuilt:
        assert Path(prebuilt).is_file(), f"NODEMEDIC_DEB={prebuilt} is not a file"
        return Path(prebuilt)
    outdir = tmp_path_factory.mktemp("deb")
    result = subprocess.run(
        [str(DEB_BUILD), str(outdir)], capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, result.stderr[-4000:]
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.is_file(), result.stdout
    return path
