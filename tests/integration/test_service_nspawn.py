"""The Debian package installed with dpkg into a real systemd, and the agent as its service.

One container (tests/nspawn.py: Debian 12, systemd 252, booted in systemd-nspawn) for the
module: ``dpkg -i`` the package ``make deb`` builds, which creates the user, enables and
starts ``nodemedic.service`` exactly as on a host. The container shares the host's
network, so a drop-in moves the agent's API to a free loopback port before the install.
The tests then show what systemd does with the agent: it is ``active`` only once the
agent has said ``READY=1``; when the agent stops making progress (SIGSTOP freezes every
thread, so no ``WATCHDOG=1`` comes) systemd's watchdog kills and restarts it; a bad
configuration (exit 78) stops it without a restart loop; as user ``nodemedic`` it restarts
a failed unit on the host it watches when the shipped polkit rule lists the unit, and is
refused one the rule does not list (the rootfs has polkitd, see
scripts/ensure-nspawn-rootfs); ``dpkg --purge`` stops it and removes its state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli import EX_CONFIG
from remediations.library import BUILTIN_DIR
from tests.conftest import free_port, http_get
from tests.nspawn import NspawnSystemd, ensure_rootfs

pytestmark = pytest.mark.systemd

UNIT = "nodemedic.service"
CONFIG = "/etc/nodemedic/nodemedic.yaml"
START_TIMEOUT = 180.0
"""Seconds to wait for a start: imports take about a CPU second, at CPUQuota=20% on busy
cores that is tens of seconds."""


class InstalledAgent:
    """The container with the package installed, and how to reach the agent in it."""

    def __init__(self, container: NspawnSystemd, port: int) -> None:
        self.container = container
        self.port = port

    @property
    def root(self) -> Path:
        """The container's file system as the host sees it (writes land in its overlay)."""
        return Path(f"/proc/{self.container.init_pid}/root")

    def show(self, *props: str) -> dict[str, str]:
        """Properties of the agent's unit as systemd reports them."""
        return self.container.systemctl_show(UNIT, *props)

    def readyz(self) -> int | None:
        """Status of GET /readyz, or None while nothing listens."""
        try:
            status, _ = http_get(f"http://127.0.0.1:{self.port}/readyz", timeout=5)
        except OSError:
            return None
        return status

    def wait_for(
        self, condition: Callable[[dict[str, str]], bool], what: str, timeout: float
    ) -> dict[str, str]:
        """Poll the unit's state until ``condition`` holds; fails the test after ``timeout``."""
        props = ("ActiveState", "SubState", "Result", "MainPID", "NRestarts", "ExecMainStatus")
        deadline = time.monotonic() + timeout
        while True:
            state = self.show(*props)
            if condition(state):
                return state
            if time.monotonic() > deadline:
                journal = self.container.run(
                    "journalctl", "-u", UNIT, "--no-pager", "-n", "40", check=False
                ).stdout
                pytest.fail(f"{what} not reached in {timeout:.0f}s: {state}\n{journal}")
            time.sleep(0.25)

    def wait_active(self) -> dict[str, str]:
        """Wait until the unit is active and running."""
        return self.wait_for(
            lambda s: s["ActiveState"] == "active" and s["SubState"] == "running",
            "active (running)",
            START_TIMEOUT,
        )

    def write_config(self, text: str) -> None:
        """Replace the agent's configuration file."""
        (self.root / CONFIG.lstrip("/")).write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def installed(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstalledAgent]:
    """A booted container with the package installed by dpkg and the agent started."""
    container = NspawnSystemd(tmp_path_factory.mktemp("nspawn-service"), ensure_rootfs())
    container.boot()
    try:
        agent = InstalledAgent(container, free_port())
        dropin = agent.root / "etc/systemd/system/nodemedic.service.d/test.conf"
        dropin.parent.mkdir(parents=True)
        dropin.write_text(
            f"[Service]\nEnvironment=NODEMEDIC_API__LISTEN=127.0.0.1:{agent.port}\n",
            encoding="utf-8",
        )
        (agent.root / "tmp" / deb.name).write_bytes(deb.read_bytes())
        install = container.run("dpkg", "-i", f"/tmp/{deb.name}", check=False, timeout=600)
        assert install.returncode == 0, install.stdout + install.stderr
        yield agent
    finally:
        container.stop()


@pytest.fixture
def agent(installed: InstalledAgent) -> InstalledAgent:
    """The installed agent, running with the shipped configuration."""
    default = installed.root / "etc/nodemedic/nodemedic.yaml.shipped"
    config = installed.root / CONFIG.lstrip("/")
    if not default.exists():
        default.write_bytes(config.read_bytes())
    config.write_bytes(default.read_bytes())
    if installed.show("ActiveState")["ActiveState"] != "active":
        installed.container.run("systemctl", "reset-failed", UNIT, check=False)
        installed.container.run("systemctl", "start", "--no-block", UNIT)
    installed.wait_active()
    return installed


def test_dpkg_install_creates_the_user_and_enables_and_starts_the_service(
    agent: InstalledAgent,
) -> None:
    run = agent.container.run

    assert run("id", "-un", "nodemedic").stdout.strip() == "nodemedic"
    assert run("systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"
    assert run("stat", "-c", "%a %U", "/etc/nodemedic/credentials").stdout.split() == [
        "700",
        "root",
    ]
    main_pid = agent.show("MainPID")["MainPID"]
    assert run("stat", "-c", "%U", f"/proc/{main_pid}").stdout.strip() == "nodemedic"
    assert agent.readyz() == 200


def test_the_service_runs_optimized_from_byte_code_compiled_at_install(
    agent: InstalledAgent,
) -> None:
    # The unit runs the agent with PYTHONOPTIMIZE=2 (2 MiB less RSS); postinst compiled
    # that level (the service cannot write /opt) and level 0 for the command line.
    run = agent.container.run
    main_pid = agent.show("MainPID")["MainPID"]
    environ = run("cat", f"/proc/{main_pid}/environ").stdout.split("\0")
    cached = run(
        "find", "/opt/nodemedic/lib", "-path", "*/agent/__pycache__/runtime.cpython-*.pyc"
    ).stdout.split()

    assert "PYTHONOPTIMIZE=2" in environ
    assert sorted(Path(path).name.split(".")[2] for path in cached) == ["opt-2", "pyc"]
    assert agent.readyz() == 200


def test_service_is_active_only_after_the_agent_says_ready(agent: InstalledAgent) -> None:
    agent.container.run("systemctl", "restart", "--no-block", UNIT)

    seen: list[tuple[str, int | None]] = []
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        # Read readiness first: if systemd says active afterwards, READY=1 came before.
        ready = agent.readyz()
        state = agent.show("ActiveState")["ActiveState"]
        seen.append((state, ready))
        if state == "active":
            break
        time.sleep(0.1)

    states = [state for state, _ in seen]
    assert states[-1] == "active", seen
    assert "activating" in states, f"the start was never seen before READY=1: {seen}"
    # While systemd waited, the agent was not ready (not listening yet, or 503).
    assert all(ready != 200 for state, ready in seen if state == "activating"), seen
    assert agent.readyz() == 200
    times = agent.show("ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic")
    assert int(times["ActiveEnterTimestampMonotonic"]) > int(
        times["ExecMainStartTimestampMonotonic"]
    )


def test_watchdog_restarts_an_agent_that_stops_making_progress(agent: InstalledAgent) -> None:
    before = agent.show("MainPID", "NRestarts", "WatchdogUSec")
    assert before["WatchdogUSec"] == "30s"

    # SIGSTOP freezes every thread: no probe loop runs and no WATCHDOG=1 is sent.
    agent.container.run("sh", "-c", f"kill -STOP {before['MainPID']}")

    # WatchdogSec=30s, then SIGABRT (with SIGCONT), RestartSec=5s, then a fresh start.
    after = agent.wait_for(
        lambda s: (
            int(s["NRestarts"]) > int(before["NRestarts"])
            and s["ActiveState"] == "active"
            and s["MainPID"] not in ("0", before["MainPID"])
        ),
        "a watchdog restart",
        30 + 5 + START_TIMEOUT,
    )
    journal = agent.container.run("journalctl", "-u", UNIT, "--no-pager", "-o", "cat").stdout
    assert "Watchdog timeout" in journal
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    assert agent.readyz() == 200


def test_bad_config_stops_the_agent_without_a_restart_loop(agent: InstalledAgent) -> None:
    agent.write_config("probes:\n  cpu:\n    interval: 5 minutes\n")

    agent.container.run("systemctl", "restart", "--no-block", UNIT)
    failed = agent.wait_for(
        lambda s: s["ActiveState"] == "failed", "failed after a bad config", START_TIMEOUT
    )

    assert failed["Result"] == "exit-code"
    assert int(failed["ExecMainStatus"]) == EX_CONFIG
    # An explicit restart job resets the counter; RestartSec=5s: three of them later the
    # unit is still failed and systemd never restarted it on its own.
    assert failed["NRestarts"] == "0"
    time.sleep(15)
    later = agent.show("ActiveState", "NRestarts")
    assert later == {"ActiveState": "failed", "NRestarts": "0"}
    journal = agent.container.run("journalctl", "-u", UNIT, "--no-pager", "-o", "cat").stdout
    assert "probes.cpu.interval" in journal


# Fails on its first start only (the marker stays in the container's /var/tmp), then runs.
FAILS_ONCE = (
    "[Service]\n"
    "ExecStart=/bin/sh -c 'if [ -e /var/tmp/{name} ]; then exec sleep infinity; "
    "else touch /var/tmp/{name}; exit 1; fi'\n"
)
LISTED = "nginx.service"
"""A unit on the shipped polkit rule's list (the test's own, not a real nginx)."""
UNLISTED = "nm-unlisted.service"


def _restart(agent: InstalledAgent) -> None:
    """Restart the agent and wait for the new process to be active (not the old one)."""
    before = agent.show("MainPID")["MainPID"]
    agent.container.run("systemctl", "restart", "--no-block", UNIT)
    agent.wait_for(
        lambda s: s["ActiveState"] == "active" and s["MainPID"] not in ("0", before),
        "active (running) after a restart",
        START_TIMEOUT,
    )


def _runs(agent: InstalledAgent) -> list[dict[str, Any]]:
    status, body = http_get(f"http://127.0.0.1:{agent.port}/v1/runs", timeout=5)
    assert status == 200, body
    runs: list[dict[str, Any]] = json.loads(body)["runs"]
    return runs


def _finished_run(agent: InstalledAgent, unit: str) -> dict[str, Any]:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        final = ("succeeded", "failed", "skipped", "interrupted")
        try:
            runs = _runs(agent)
        except OSError:  # the API is not up yet (the agent is starting, slowly at 20% CPU)
            runs = []
        done = [r for r in runs if r["target"] == unit and r["state"] in final]
        if done:
            status, body = http_get(
                f"http://127.0.0.1:{agent.port}/v1/runs/{done[0]['id']}", timeout=5
            )
            assert status == 200, body
            run: dict[str, Any] = json.loads(body)
            return run
        time.sleep(0.5)
    journal = agent.container.run("journalctl", "-u", UNIT, "--no-pager", "-n", "60").stdout
    pytest.fail(f"no finished run on {unit} within {START_TIMEOUT:.0f}s\n{journal}")


def test_the_installed_agent_restarts_a_failed_unit_its_polkit_rule_lets_it_manage(
    agent: InstalledAgent,
) -> None:
    """The whole path as on a host: user nodemedic, D-Bus, polkitd and the shipped rule.

    The built-in restart-failed-unit is switched to enforce the way the operations guide
    says (the same name in remediation.playbooks_dir). systemd asks polkitd about every
    request of the unprivileged agent; the rule allows the listed unit, not the other.
    """
    run = agent.container.run
    assert run("test", "-x", "/usr/lib/polkit-1/polkitd", check=False).returncode == 0, (
        "the rootfs lacks polkitd: scripts/ensure-nspawn-rootfs installs it"
    )
    for name in (LISTED, UNLISTED):
        unit_file = agent.root / "etc/systemd/system" / name
        unit_file.write_text(FAILS_ONCE.format(name=name), encoding="utf-8")
    agent.container.daemon_reload()
    books = agent.root / "etc/nodemedic/playbooks"
    books.mkdir(exist_ok=True)
    builtin = (BUILTIN_DIR / "restart-failed-unit.yaml").read_text(encoding="utf-8")
    assert "\nmode: observe\n" in builtin
    enforce = builtin.replace("\nmode: observe\n", "\nmode: enforce\n")
    (books / "restart-failed-unit.yaml").write_text(enforce, encoding="utf-8")
    shipped = (agent.root / CONFIG.lstrip("/")).read_text(encoding="utf-8")
    agent.write_config(
        shipped
        + f"probes:\n  units: {{units: [{LISTED}, {UNLISTED}]}}\n"
        + "remediation:\n  playbooks_dir: /etc/nodemedic/playbooks\n"
    )
    try:
        _restart(agent)

        # One at a time: the engine runs one disruptive run per host.
        run("systemctl", "start", "--no-block", LISTED)
        healed = _finished_run(agent, LISTED)
        listed = agent.container.systemctl_show(LISTED, "ActiveState", "NRestarts")
        run("systemctl", "start", "--no-block", UNLISTED)
        refused = _finished_run(agent, UNLISTED)
        unlisted = agent.container.systemctl_show(UNLISTED, "ActiveState")
    finally:
        agent.write_config(shipped)
        _restart(agent)

    assert healed["state"] == "succeeded", healed
    assert listed == {"ActiveState": "active", "NRestarts": "0"}
    steps = [(s["action"], s["state"]) for s in healed["steps"] if s["phase"] == "steps"]
    assert steps == [("systemd.reset_failed", "succeeded"), ("systemd.restart_unit", "succeeded")]
    assert refused["state"] == "failed", refused
    assert unlisted == {"ActiveState": "failed"}
    denial = refused["steps"][0]["summary"]
    assert "authentication" in denial.lower() or "denied" in denial.lower(), denial
    # The decision record says what the agent did as which user, for `nodemedic why`.
    why = run("nodemedic", "why", healed["id"], "--config", CONFIG, check=False)
    assert why.returncode == 0, why.stderr
    assert "state succeeded" in why.stdout


def test_purge_stops_the_agent_and_removes_its_state(installed: InstalledAgent) -> None:
    run = installed.container.run
    assert run("test", "-d", "/var/lib/nodemedic", check=False).returncode == 0

    purge = run("dpkg", "--purge", "nodemedic", check=False, timeout=300)

    assert purge.returncode == 0, purge.stdout + purge.stderr
    assert installed.show("LoadState")["LoadState"] == "not-found"
    assert run("test", "-e", "/var/lib/nodemedic", check=False).returncode != 0
    assert run("test", "-e", "/opt/nodemedic", check=False).returncode != 0
    assert installed.readyz() is None
    # Debian keeps system users: files they owned may remain elsewhere.
    assert run("id", "-un", "nodemedic").stdout.strip() == "nodemedic"
