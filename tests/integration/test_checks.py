"""Endpoint and custom checks end to end: the real ``nodemedic run`` against a real HTTP
server that the test stops, and a real plugin script that reports CRITICAL."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.probes.catalog import PROBE_NAMES
from tests.conftest import AgentProcess, free_port, http_get, http_json

RULES = [
    {
        "name": "endpoint-down",
        "metric": "nodemedic_endpoint_up",
        "op": "<",
        "threshold": 1,
        "for": "600ms",
        "severity": "critical",
    },
    {
        "name": "custom-check-critical",
        "metric": "nodemedic_custom_check_status",
        "op": "==",
        "threshold": 2,
        "severity": "critical",
    },
]
ONLY_CHECKS = {
    name: {"enabled": False} for name in PROBE_NAMES if name not in ("endpoints", "custom")
}


@pytest.fixture
def web_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``python -m http.server`` on a free loopback port, serving a ``healthz`` file."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "healthz").write_text("ok\n", encoding="utf-8")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), "the web server")
        yield proc, port
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_stopped_server_fires_endpoint_down_in_conditions_and_metrics(
    agent_factory: Callable[..., AgentProcess],
    web_server: tuple[subprocess.Popen[bytes], int],
    tmp_path: Path,
) -> None:
    server, port = web_server
    plugin = tmp_path / "check_critical"
    plugin.write_text("#!/bin/sh\necho 'CRITICAL - on fire | temp=99C'\nexit 2\n")
    plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
    agent = agent_factory(
        {
            "probes": ONLY_CHECKS
            | {
                "endpoints": {
                    "interval": "200ms",
                    "checks": [{"name": "web", "url": f"http://127.0.0.1:{port}/healthz"}],
                },
                "custom": {
                    "interval": "200ms",
                    "checks": [{"name": "fire", "command": [str(plugin)]}],
                },
            },
            "rules": RULES,
        }
    )
    agent.start()
    agent.wait_ready()
    _wait_for(lambda: 'nodemedic_endpoint_up{check="web"} 1.0' in _metrics(agent), "web up")
    assert _firing(agent, "endpoint-down") == []

    server.kill()
    server.wait(timeout=10)

    _wait_for(lambda: _firing(agent, "endpoint-down") != [], "endpoint-down firing", agent)
    condition = _firing(agent, "endpoint-down")[0]
    assert condition["labels"] == {"check": "web"}
    assert condition["severity"] == "critical"
    metrics = _metrics(agent)
    assert 'nodemedic_endpoint_up{check="web"} 0.0' in metrics
    assert 'nodemedic_endpoint_failure{check="web",reason="connect"} 1.0' in metrics
    assert 'nodemedic_condition_state{rule="endpoint-down",state="firing"}' in metrics
    events = http_json(agent.url + "/v1/events?type=io.nodemedic.endpoint.down")["events"]
    assert events[0]["data"]["reason"].endswith("Connection refused")
    assert "check endpoints/web is down: connect to 127.0.0.1" in agent.log()

    assert _firing(agent, "custom-check-critical")[0]["labels"] == {"check": "fire"}
    assert 'nodemedic_custom_check_perfdata{check="fire",label="temp",uom="C"} 99.0' in metrics
    code, _ = agent.stop()
    assert code == 0


def _answers(url: str) -> bool:
    try:
        return http_get(url, timeout=1.0)[0] == 200
    except OSError:
        return False


def _metrics(agent: AgentProcess) -> str:
    status, body = http_get(agent.url + "/metrics")
    assert status == 200
    return body


def _firing(agent: AgentProcess, rule: str) -> list[dict[str, Any]]:
    conditions = http_json(agent.url + "/v1/conditions?state=firing")["conditions"]
    return [c for c in conditions if c["name"] == rule]


def _wait_for(predicate: Callable[[], bool], what: str, agent: AgentProcess | None = None) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    log = agent.log() if agent is not None else ""
    pytest.fail(f"{what} not seen within 30s\n{log}")
