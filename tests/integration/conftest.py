"""Fixtures shared by the integration tests of the packaging."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

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
