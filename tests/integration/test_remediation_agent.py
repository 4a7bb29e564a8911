"""The remediation engine inside a real ``nodemedic run`` process.

The playbooks use the recording actions of tests.remediation_actions (loaded through
``remediation.action_modules``, as a site's own actions would be); their effect is a
line in a real file, so what the agent did is visible even after SIGKILL.
"""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config_remote import hash_token
from tests.conftest import REPO, AgentProcess, http_json, run_cli, until
from tests.remediation_actions import read_log

ENV = {"PYTHONPATH": str(REPO)}
PROBES_OFF = {
    name: {"enabled": False}
    for name in (
        "cpu",
        "memory",
        "pressure",
        "filesystem",
        "diskio",
        "network",
        "fds",
        "clock",
        "sensors",
    )
}


OPS_TOKEN = "test-token-0123456789abcdef"  # noqa: S105 - the test's own throwaway token


def _settings(tmp: Path, playbook: dict[str, Any]) -> dict[str, Any]:
    books = tmp / "playbooks"
    books.mkdir(exist_ok=True)
    (books / "demo.yaml").write_text(json.dumps(playbook), encoding="utf-8")
    return {
        "probes": {**PROBES_OFF, "load": {"interval": "200ms"}},
        # Always breaching: the condition fires on the first sample.
        "rules": [{"name": "always", "metric": "nodemedic_load1", "op": ">=", "threshold": -1}],
        "remediation": {
            "playbooks_dir": str(books),
            "builtin_playbooks": False,
            "action_modules": ["tests.remediation_actions"],
            "pause_file": str(tmp / "pause"),
        },
        "remote": {"api_tokens": [{"name": "ops", "sha256": hash_token(OPS_TOKEN), "pause": True}]},
    }


def _playbook(tmp: Path, mode: str) -> dict[str, Any]:
    log = str(tmp / "steps.log")
    return {
        "name": "demo",
        "mode": mode,
        "trigger": {"conditions": ["always"]},
        "target": "demo.service",
        "steps": [
            {"action": "test.record", "params": {"log": log, "note": "prepare"}},
            {
                "action": "test.record_disruptive",
                "params": {"log": log, "note": "act", "wait_for": str(tmp / "never")},
                "timeout": "1h",
            },
        ],
    }


def _events(agent: AgentProcess, kind: str) -> list[dict[str, Any]]:
    body = http_json(f"{agent.url}/v1/events?type=io.nodemedic.remediation.{kind}&limit=100")
    events: list[dict[str, Any]] = body["events"]
    return events


def test_a_run_killed_mid_step_is_reconciled_without_repeating_the_step(
    tmp_path: Path, agent_factory: Callable[..., AgentProcess]
) -> None:
    agent = agent_factory(_settings(tmp_path, _playbook(tmp_path, "enforce")))
    log = tmp_path / "steps.log"
    agent.start(env=ENV)
    agent.wait_ready()
    until(lambda: [x for x in read_log(log) if x["note"] == "act"], "the blocking step", agent)
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(timeout=10)

    agent.start(env=ENV)
    agent.wait_ready()
    interrupted = until(lambda: _events(agent, "interrupted"), "an interrupted event", agent)
    run_id = interrupted[0]["data"]["run"]
    assert "not idempotent" in interrupted[0]["data"]["reason"]
    run = http_json(f"{agent.url}/v1/runs/{run_id}")
    assert run["state"] == "interrupted"
    # Each step ran once: the interrupted disruptive step was not repeated.
    assert [x["note"] for x in read_log(log)] == ["prepare", "act"]
    assert [d["gate"] for d in run["decisions"] if d["phase"] == "execute"][-1] == "approval"

    why = run_cli("why", run_id, "--config", str(agent.config_path), env=ENV)
    assert why.returncode == 0, why.stderr
    assert "state interrupted" in why.stdout
    assert "cooldown" in why.stdout
    assert "test.record_disruptive: started" in why.stdout
    agent.stop()


def test_observe_mode_touches_nothing_and_says_what_would_run(
    tmp_path: Path, agent_factory: Callable[..., AgentProcess]
) -> None:
    agent = agent_factory(_settings(tmp_path, _playbook(tmp_path, "observe")))
    agent.start(env=ENV)
    agent.wait_ready()
    would = until(lambda: _events(agent, "would_run"), "a would_run event", agent)
    steps = would[0]["data"]["steps"]
    assert [s["action"] for s in steps] == ["test.record", "test.record_disruptive"]
    assert steps[0]["params"]["note"] == "prepare"
    assert not (tmp_path / "steps.log").exists()
    runs = http_json(f"{agent.url}/v1/runs")["runs"]
    assert runs[0]["would_run"] is True
    assert runs[0]["state"] == "skipped"
    metrics = urllib.request.urlopen(f"{agent.url}/metrics", timeout=5).read().decode()  # noqa: S310
    assert 'nodemedic_remediation_would_runs_total{playbook="demo"} 1.0' in metrics
    assert 'nodemedic_remediation_breaker_state{playbook="demo"} 0.0' in metrics

    request = urllib.request.Request(  # noqa: S310 - loopback only
        f"{agent.url}/v1/pause",
        method="POST",
        headers={"Authorization": f"Bearer {OPS_TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310
        assert resp.status == 202
        assert json.loads(resp.read())["detail"] == "remediation paused"
    status = http_json(f"{agent.url}/v1/remediation")
    assert status["paused"] is True
    assert "ops" in status["reason"]
    agent.stop()


def test_an_invalid_playbook_stops_the_agent_at_start_naming_file_and_field(
    tmp_path: Path, agent_factory: Callable[..., AgentProcess]
) -> None:
    book = _playbook(tmp_path, "enforce")
    book["steps"][0]["retries"] = 9
    agent = agent_factory(_settings(tmp_path, book))
    result = run_cli("validate", "--config", str(agent.config_path), env=ENV)
    assert result.returncode == 78
    assert f"{tmp_path / 'playbooks' / 'demo.yaml'}: steps[0].retries" in result.stderr
    agent.start(env=ENV)
    assert agent.proc is not None
    assert agent.proc.wait(timeout=30) == 78
    assert isinstance(agent.proc, subprocess.Popen)
