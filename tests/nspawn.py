"""A real systemd (Debian 12, systemd 252) booted in ``systemd-nspawn`` for the tests.

PID 1 of the test machine is not systemd, so tests that talk to systemd boot one: the
rootfs cached by ``scripts/ensure-nspawn-rootfs`` (built on first use, about a minute),
booted with ``--volatile=overlay`` so the cache stays untouched, in cgroup directories of
its own (two containers would otherwise share ``/payload`` and ``/supervisor`` at the
cgroup root and leave them behind), with ``--register=no --keep-unit`` (there is no
machined). The container's ``/run/dbus`` is a host directory, so the host reaches the
container's system bus at :attr:`NspawnSystemd.bus_address`; its ``/run/systemd/system``
is another, where :meth:`NspawnSystemd.install_unit` writes unit files.

Fixtures (marker ``systemd``, root only): ``nspawn_systemd`` (one container for the
session: boots cost about a second) and ``nspawn_factory`` (containers of a test's own,
for tests that break them, e.g. stop D-Bus). Tests sharing the session container must use
:meth:`NspawnSystemd.unit_name` so no two tests touch the same unit. Register them with::

    from tests.nspawn import nspawn_factory_fixture, nspawn_systemd_fixture
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOTFS = Path(os.environ.get("NODEMEDIC_NSPAWN_ROOTFS", str(REPO / ".cache" / "nspawn-rootfs")))
ENSURE_ROOTFS = REPO / "scripts" / "ensure-nspawn-rootfs"
NSPAWN = shutil.which("systemd-nspawn") or "/usr/bin/systemd-nspawn"
NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"
CGROUP = Path("/sys/fs/cgroup")
_PR_SET_PDEATHSIG = 1
_INSIDE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_names = itertools.count(1)


class NspawnError(RuntimeError):
    """Raised when the container cannot be booted, entered or stopped; carries its log."""


def ensure_rootfs(rootfs: Path = ROOTFS) -> Path:
    """The cached rootfs, built by ``scripts/ensure-nspawn-rootfs`` when missing."""
    complete = (rootfs / ".nodemedic-rootfs").exists()
    if not complete or not (rootfs / "usr/lib/polkit-1/polkitd").exists():
        result = subprocess.run(
            [str(ENSURE_ROOTFS), str(rootfs)],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
            cwd=REPO,
        )
        if result.returncode != 0:
            raise NspawnError(f"cannot build the nspawn rootfs:\n{result.stderr}")
    return rootfs


def _cgroup_roots() -> list[Path]:
    """Where a container's own cgroup directories go: both hierarchies of a hybrid host
    (the named ``systemd`` v1 one and ``unified``), or the root of a pure cgroup2 host."""
    hybrid = [CGROUP / "systemd", CGROUP / "unified"]
    if all((root / "cgroup.procs").exists() for root in hybrid):
        return hybrid
    return [CGROUP]


def _enter_cgroups_and_die_with_parent(dirs: list[Path]) -> Callable[[], None]:
    def enter() -> None:
        for directory in dirs:
            (directory / "cgroup.procs").write_text("0", encoding="ascii")
        # A test run killed with SIGKILL must not leave a container behind; SIGTERM
        # makes nspawn shut the container down cleanly.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return enter


def _remove_cgroup(directory: Path, timeout: float = 10.0) -> None:
    """Remove a cgroup directory and its children, depth first, once they are empty."""
    deadline = time.monotonic() + timeout
    while directory.exists():
        subdirs = sorted(
            (p for p in directory.rglob("*") if p.is_dir()),
            key=lambda p: len(p.parts),
            reverse=True,
        )
        try:
            for sub in [*subdirs, directory]:
                sub.rmdir()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def sweep_stale_containers() -> None:
    """Kill containers and remove cgroups of test runs that were killed before teardown.

    A container's directories are named ``nm-test-<pid>-<n>`` after the test process; once
    that process is gone, nothing owns them any more.
    """
    for root in [*_cgroup_roots(), Path("/run/systemd/nspawn/propagate")]:
        if not root.is_dir():
            continue
        for directory in root.glob("nm-test-*-*"):
            owner = directory.name.split("-")[2]
            if not owner.isdigit() or Path(f"/proc/{owner}").exists():
                continue
            if root.name == "propagate":
                shutil.rmtree(directory, ignore_errors=True)
                continue
            # A container orphaned by a SIGKILLed run keeps running; its processes are
            # the ones in its cgroup, and they were ours.
            for procs in directory.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    for pid in procs.read_text(encoding="ascii").split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
            with contextlib.suppress(OSError):
                _remove_cgroup(directory, timeout=5.0)


class NspawnSystemd:
    """One booted container: its init PID, system bus address and unit directory.

    Args:
        workdir: a directory of the test's own for the bus socket, units and the log.
        rootfs: the cached rootfs (see :func:`ensure_rootfs`).
    """

    def __init__(self, workdir: Path, rootfs: Path = ROOTFS) -> None:
        self.workdir = workdir
        self.rootfs = rootfs
        self.name = f"nm-test-{os.getpid()}-{next(_names)}"
        self.bus_dir = workdir / "dbus"
        self.unit_dir = workdir / "units"
        self.log_path = workdir / "nspawn.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.init_pid = 0
        self.boot_seconds = 0.0
        self.cgroup_dirs = [root / self.name for root in _cgroup_roots()]
        for directory in (self.bus_dir, self.unit_dir):
            directory.mkdir(parents=True, exist_ok=True)

    @property
    def bus_address(self) -> str:
        """The container's system bus, as the host reaches it (``unix:path=...``)."""
        return f"unix:path={self.bus_dir / 'system_bus_socket'}"

    @property
    def running(self) -> bool:
        """Whether the nspawn process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """What nspawn and the container's console printed."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def boot(self, timeout: float = 60.0) -> None:
        """Boot the container and wait until systemd says ``running`` and the bus listens.

        Raises:
            NspawnError: when nspawn exits or the boot does not finish in time.
        """
        for directory in self.cgroup_dirs:
            directory.mkdir(exist_ok=True)
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    NSPAWN,
                    "-q",
                    "-D",
                    str(self.rootfs),
                    f"--machine={self.name}",
                    "--boot",
                    "--register=no",
                    "--keep-unit",
                    "--console=passive",
                    "--volatile=overlay",
                    f"--bind={self.bus_dir}:/run/dbus",
                    f"--bind={self.unit_dir}:/run/systemd/system",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"},
                preexec_fn=_enter_cgroups_and_die_with_parent(self.cgroup_dirs),  # noqa: PLW1509 - writes cgroup.procs and calls prctl only
            )
        deadline = started + timeout
        self.init_pid = self._wait_for_init(deadline)
        state = self._wait_running(deadline)
        socket_path = self.bus_dir / "system_bus_socket"
        while not socket_path.exists():
            self._check_alive_before(deadline, f"no system bus socket at {socket_path}")
            time.sleep(0.02)
        self.boot_seconds = time.monotonic() - started
        if state != "running":
            raise NspawnError(f"container booted {state!r}, not 'running'; log:\n{self.log()}")

    def run(
        self, *args: str, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (its mount, PID, UTS and IPC namespaces).

        Raises:
            NspawnError: with ``check``, when the command exits non-zero.
        """
        result = subprocess.run(
            [
                NSENTER,
                "-t",
                str(self.init_pid),
                "-m",
                "-p",
                "-u",
                "-i",
                "--",
                "/usr/bin/env",
                "-i",
                f"PATH={_INSIDE_PATH}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise NspawnError(
                f"{' '.join(args)} exited {result.returncode} in {self.name}: "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result

    def unit_name(self, stem: str, suffix: str = "service") -> str:
        """A unit name no other test uses: ``nm-<stem>-<random>.<suffix>``."""
        return f"nm-{stem}-{secrets.token_hex(3)}.{suffix}"

    def install_unit(self, name: str, text: str) -> Path:
        """Write a unit file into the container's ``/run/systemd/system`` and daemon-reload."""
        path = self.unit_dir / name
        path.write_text(text, encoding="utf-8")
        self.daemon_reload()
        return path

    def remove_unit(self, name: str) -> None:
        """Stop a unit (if loaded), delete its file, reset its failure and daemon-reload."""
        self.run("systemctl", "stop", name, check=False)
        (self.unit_dir / name).unlink(missing_ok=True)
        self.daemon_reload()
        self.run("systemctl", "reset-failed", name, check=False)

    def daemon_reload(self) -> None:
        """``systemctl daemon-reload`` inside (returns once systemd has reloaded)."""
        self.run("systemctl", "daemon-reload")

    def systemctl_show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show -p ...`` inside, as a dict: the state as systemd itself reports it."""
        result = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props))
        pairs = (line.partition("=") for line in result.stdout.splitlines() if "=" in line)
        return {key: value for key, _, value in pairs}

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM nspawn (the container shuts down cleanly), then remove its cgroups."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            for directory in self.cgroup_dirs:
                with contextlib.suppress(FileNotFoundError):
                    _remove_cgroup(directory)
            shutil.rmtree(Path("/run/systemd/nspawn/propagate") / self.name, ignore_errors=True)

    # --- internals

    def _check_alive_before(self, deadline: float, waiting_for: str) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise NspawnError(f"systemd-nspawn exited with {code}; log:\n{self.log()}")
        if time.monotonic() > deadline:
            self.stop()
            raise NspawnError(f"container boot timed out: {waiting_for}; log:\n{self.log()}")

    def _wait_for_init(self, deadline: float) -> int:
        """The container's PID 1 as the host sees it: the ``systemd`` child of nspawn."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        while True:
            self._check_alive_before(deadline, "no systemd child of nspawn")
            with contextlib.suppress(OSError):
                for pid in children.read_text(encoding="ascii").split():
                    comm = Path(f"/proc/{pid}/comm").read_text(encoding="ascii").strip()
                    if comm == "systemd":
                        return int(pid)
            time.sleep(0.01)

    def _wait_running(self, deadline: float) -> str:
        while True:
            self._check_alive_before(deadline, "systemd never reached running")
            remaining = max(1.0, deadline - time.monotonic())
            try:
                result = self.run(
                    "systemctl", "is-system-running", "--wait", check=False, timeout=remaining
                )
            except subprocess.TimeoutExpired:
                continue
            state = result.stdout.strip()
            if state in {"running", "degraded"}:
                return state
            time.sleep(0.05)


ContainerFactory = Callable[[], NspawnSystemd]


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("systemd tests boot a container with systemd-nspawn and need root")


@pytest.fixture(name="nspawn_systemd", scope="session")
def nspawn_systemd_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NspawnSystemd]:
    """One booted container shared by the session (use :meth:`NspawnSystemd.unit_name`)."""
    _require_root()
    sweep_stale_containers()
    container = NspawnSystemd(tmp_path_factory.mktemp("nspawn"), ensure_rootfs())
    container.boot()
    yield container
    container.stop()


@pytest.fixture(name="nspawn_factory")
def nspawn_factory_fixture(tmp_path: Path) -> Iterator[ContainerFactory]:
    """Boot containers of the test's own; every one is stopped at the end of the test."""
    _require_root()
    sweep_stale_containers()
    rootfs = ensure_rootfs()
    made: list[NspawnSystemd] = []

    def make() -> NspawnSystemd:
        container = NspawnSystemd(tmp_path / f"nspawn-{len(made)}", rootfs)
        made.append(container)
        container.boot()
        return container

    yield make
    for container in made:
        container.stop()
