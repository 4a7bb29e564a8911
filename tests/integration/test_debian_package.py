"""The Debian package that ``make deb`` builds: lintian-clean, complete, and it runs.

The package is built once per session with ``packaging/deb/build`` (pip fetches or reuses
wheels: about 45 s with a warm cache in .cache/pip-deb, 2-3 minutes cold) and inspected
with Debian's own tools: ``lintian``, ``dpkg-deb --info`` and ``dpkg-deb --contents``.
The virtualenv is relocatable enough to run from the extracted tree (it finds its
``pyvenv.cfg`` beside ``bin/``), which shows that the shipped agent imports and accepts
the shipped configuration. Installing it with dpkg into a booted systemd is the job of
tests/integration/test_service_nspawn.py. The ``deb`` fixture is in
tests/integration/conftest.py, so both share one build.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent import __version__
from agent.cli import EX_CONFIG
from tests.conftest import REPO

pytestmark = pytest.mark.deb


def _run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="session")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's file tree, as dpkg would install it."""
    root = tmp_path_factory.mktemp("root")
    result = _run("dpkg-deb", "--extract", deb, root)
    assert result.returncode == 0, result.stderr
    return root


def _control(deb: Path, name: str) -> str:
    result = _run("dpkg-deb", "--info", deb, name)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_lintian_reports_no_errors_or_warnings(deb: Path) -> None:
    lintian = shutil.which("lintian")
    assert lintian is not None, "lintian not found: make test installs it (APT_TEST)"

    # --no-cfg: a developer's ~/.lintianrc must not change the verdict.
    result = _run(lintian, "--no-cfg", "--fail-on", "error,warning", deb, timeout=600)

    tags = [line for line in result.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert result.returncode == 0, result.stdout + result.stderr
    assert tags == []


def test_package_is_named_for_the_version_and_this_architecture(deb: Path) -> None:
    arch = _run("dpkg", "--print-architecture").stdout.strip()

    assert deb.name == f"nodemedic_{__version__}_{arch}.deb"
    control = _control(deb, "control")
    assert f"Version: {__version__}\n" in control
    assert f"Architecture: {arch}\n" in control
    depends = re.search(r"^Depends: (.*)$", control, re.MULTILINE)
    assert depends is not None
    for package in ("python3.11", "libsystemd0", "systemd", "init-system-helpers"):
        assert package in depends.group(1)


def test_default_config_is_the_only_conffile(deb: Path) -> None:
    assert _control(deb, "conffiles").split() == ["/etc/nodemedic/nodemedic.yaml"]


def test_unit_and_system_files_are_installed_unchanged(unpacked: Path) -> None:
    shipped = {
        "lib/systemd/system/nodemedic.service": "systemd/nodemedic.service",
        "usr/lib/sysusers.d/nodemedic.conf": "systemd/nodemedic.sysusers",
        "usr/lib/tmpfiles.d/nodemedic.conf": "systemd/nodemedic.tmpfiles",
        "usr/share/polkit-1/rules.d/50-nodemedic.rules": "packaging/polkit/50-nodemedic.rules",
        "etc/nodemedic/nodemedic.yaml": "packaging/deb/nodemedic.yaml",
        "usr/share/doc/nodemedic/configuration.md": "docs/configuration.md",
    }
    for installed, source in shipped.items():
        assert (unpacked / installed).read_bytes() == (REPO / source).read_bytes(), installed
    # The unit starts the virtualenv's console script, which the package ships.
    unit = (unpacked / "lib/systemd/system/nodemedic.service").read_text(encoding="utf-8")
    assert "ExecStart=/opt/nodemedic/bin/nodemedic run " in unit
    assert (unpacked / "opt/nodemedic/bin/nodemedic").is_file()
    assert (unpacked / "usr/bin/nodemedic").readlink() == Path("/opt/nodemedic/bin/nodemedic")


def test_files_are_owned_by_root_and_not_group_or_world_writable(deb: Path) -> None:
    listing = _run("dpkg-deb", "--contents", deb).stdout.splitlines()

    assert listing
    for line in listing:
        mode, owner = line.split()[:2]
        assert owner == "root/root", line
        if not mode.startswith("l"):  # a symlink's own mode means nothing
            assert mode[5] != "w", f"group-writable: {line}"
            assert mode[8] != "w", f"world-writable: {line}"


def test_postinst_creates_the_user_before_it_enables_and_starts_the_service(deb: Path) -> None:
    postinst = _control(deb, "postinst")

    sysusers = postinst.index("systemd-sysusers ")
    assert "nodemedic.conf" in postinst[sysusers : postinst.index("\n", sysusers)]
    assert sysusers < postinst.index("systemd-tmpfiles ")
    assert sysusers < postinst.index("deb-systemd-helper enable 'nodemedic.service'")
    assert sysusers < postinst.index("deb-systemd-invoke $_dh_action 'nodemedic.service'")
    # An upgrade restarts the agent, a first install starts it.
    assert "_dh_action=restart" in postinst


def test_prerm_stops_on_remove_and_postrm_purges_the_state(deb: Path) -> None:
    prerm = _control(deb, "prerm")
    postrm = _control(deb, "postrm")

    assert "deb-systemd-invoke stop 'nodemedic.service'" in prerm
    purge = postrm[postrm.index('if [ "$1" = "purge" ]') :]
    assert "deb-systemd-helper purge 'nodemedic.service'" in purge
    assert "rm -rf /var/lib/nodemedic" in purge


def test_maintainer_scripts_are_valid_posix_shell(unpacked: Path, deb: Path) -> None:
    for script in ("postinst", "prerm", "postrm"):
        path = unpacked / script
        path.write_text(_control(deb, script), encoding="utf-8")
        result = _run("sh", "-n", path)
        assert result.returncode == 0, f"{script}: {result.stderr}"


def test_shipped_agent_accepts_the_shipped_config(unpacked: Path) -> None:
    python = unpacked / "opt/nodemedic/bin/python"
    config = unpacked / "etc/nodemedic/nodemedic.yaml"

    result = _run(python, "-m", "agent.cli", "validate", "--config", config)

    assert result.returncode == 0, result.stdout + result.stderr
    # systemd-python was built for this interpreter: sd_notify and the journal work.
    imported = _run(python, "-c", "import systemd.daemon, systemd.journal, psutil, aiohttp")
    assert imported.returncode == 0, imported.stderr
    # The optional parts ship too, so a GPU or Kubernetes node needs only configuration.
    optional = _run(
        python,
        "-c",
        "import pynvml; from agent.kube_client import missing_client;"
        " raise SystemExit(missing_client())",
    )
    assert optional.returncode == 0, optional.stderr


def test_shipped_agent_rejects_a_bad_config_with_exit_78(unpacked: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("probes:\n  cpu:\n    interval: 5 minutes\n", encoding="utf-8")

    result = _run(
        unpacked / "opt/nodemedic/bin/python", "-m", "agent.cli", "validate", "--config", bad
    )

    assert result.returncode == EX_CONFIG
    assert "probes.cpu.interval" in result.stdout + result.stderr
