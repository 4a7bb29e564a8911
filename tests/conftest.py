"""Fixtures shared by the whole suite: running the real ``nodemedic`` command."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.probes.catalog import PROBE_NAMES

REPO = Path(__file__).resolve().parent.parent
NODEMEDIC = Path(sys.executable).with_name("nodemedic")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(url: str, *, timeout: float = 5.0) -> tuple[int, str]:
    """GET ``url``; returns (status, body) also for 4xx/5xx answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def http_json(url: str) -> Any:
    """GET ``url`` and decode its JSON body, requiring a 200."""
    status, body = http_get(url)
    assert status == 200, f"{url}: {status} {body}"
    return json.loads(body)


class AgentProcess:
    """A real ``nodemedic run`` child process with its own config, state dir and port."""

    def __init__(self, workdir: Path, settings: Mapping[str, Any]) -> None:
        self.workdir = workdir
        self.port = free_port()
        config: dict[str, Any] = {
            "state_dir": str(workdir / "state"),
            "api": {"listen": f"127.0.0.1:{self.port}"},
            "log": {"level": "debug"},
        }
        config.update(settings)
        self.config_path = workdir / "nodemedic.yaml"
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log_path = workdir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The agent's API base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, env: Mapping[str, str] | None = None) -> None:
        """Start the agent in the background."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(NODEMEDIC), "run", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=self.workdir,
            )

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until /readyz answers 200; fail with the agent's log otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status, _ = http_get(self.url + "/readyz", timeout=1.0)
            except OSError:
                status = 0
            if status == 200:
                return
            time.sleep(0.1)
        pytest.fail(f"agent not ready within {timeout}s:\n{self.log()}")

    def stop(
        self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0
    ) -> tuple[int, float]:
        """Send ``sig`` and wait; returns (exit code, seconds it took)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        """Kill the agent if it still runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        """Everything the agent logged so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Any]:
    """Make AgentProcess instances that are killed at the end of the test."""
    made: list[AgentProcess] = []

    def make(settings: Mapping[str, Any], name: str = "agent") -> AgentProcess:
        workdir = tmp_path / name
        workdir.mkdir(exist_ok=True)
        agent = AgentProcess(workdir, settings)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.kill()


FAST_PROBES = {name: {"interval": "200ms"} for name in PROBE_NAMES}


def until(check: Callable[[], Any], what: str, agent: AgentProcess, timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the agent's log.

    Fails at once, with the log, if the agent process has exited meanwhile.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent.proc is not None and agent.proc.poll() is not None:
            code = agent.proc.returncode
            pytest.fail(
                f"agent exited with {code} while waiting for {what}:\n{agent.log()[-6000:]}"
            )
        found = check()
        if found:
            return found
        time.sleep(0.05)
    pytest.fail(f"{what} did not happen within {timeout}s:\n{agent.log()[-6000:]}")


def run_cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``nodemedic ARGS`` to completion."""
    return subprocess.run(
        [str(NODEMEDIC), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )
