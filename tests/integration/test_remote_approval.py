"""Signed approvals of runs that wait for one, on a real agent and a real Mosquitto.

The playbooks are in enforce mode with ``safety.approval: required`` and a harmless
recording step (tests.remediation_actions), so "it ran" is a line in a file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.brokers import (  # noqa: F401
    BrokerFactory,
    mosquitto_factory_fixture,
    mqtt_pki_fixture,
)
from tests.conftest import http_json, run_cli, until
from tests.remediation_actions import read_log
from tests.remote_fleet import (  # noqa: F401
    ENV,
    AgentFactory,
    Operator,
    RemoteAgent,
    events,
    healthy,
    playbook,
    remote_agents_fixture,
    send,
)

pytestmark = [pytest.mark.mosquitto]


def _state(agent: RemoteAgent, run_id: str) -> str:
    return str(http_json(f"{agent.url}/v1/runs/{run_id}")["state"])


def _awaiting(agent: RemoteAgent, run_id: str) -> dict[str, Any]:
    until(lambda: _state(agent, run_id) == "awaiting_approval", "awaiting_approval", agent)
    found: list[dict[str, Any]] = until(
        lambda: [
            e
            for e in events(agent, "io.nodemedic.remediation.awaiting_approval")
            if e["data"]["run"] == run_id
        ],
        "the awaiting_approval event",
        agent,
    )
    return found[0]


def test_a_waiting_run_runs_only_on_a_signed_approval_in_time(
    tmp_path: Path, mosquitto_factory: BrokerFactory, remote_agents: AgentFactory
) -> None:
    broker = mosquitto_factory(persistence=False)
    keys = tmp_path / "keys"
    runner = Operator.create(keys, "runner", playbooks=["gated*"], params=["note"])
    approver = Operator.create(keys, "approver", playbooks=["gated*"], approve=True)
    log = tmp_path / "steps.log"
    agent = remote_agents(
        "web-1",
        broker=broker,
        operators=[runner, approver],
        playbooks=[
            playbook("gated", mode="enforce", log=log, approval="required"),
            playbook(
                "gated-short", mode="enforce", log=log, approval="required", approval_timeout="1s"
            ),
        ],
    ).start_ready()
    until(agent.subscribed, "the MQTT session", agent)
    config = tmp_path / "operator.yaml"
    config.write_text(yaml.safe_dump({"mqtt": {"url": broker.url("anon")}}), encoding="utf-8")

    def cli(command: str, key: Operator, *args: str) -> tuple[int, str]:
        result = run_cli(
            command,
            "--config",
            str(config),
            "--key",
            str(key.key_file),
            "--node",
            "web-1",
            "--wait",
            "30",
            *args,
            env=ENV,
        )
        return result.returncode, result.stdout + result.stderr

    code, out = cli("trigger", runner, "gated", "--param", "note=approved")
    assert code == 0, out
    run_id = out.split("run=", 1)[1].split(":", 1)[0]
    waiting = _awaiting(agent, run_id)
    assert waiting["data"]["deadline"] > time.time()

    code, out = cli("approve", runner, run_id)
    assert code == 1
    assert "web-1: REFUSED not_allowed" in out
    assert "may not approve" in out
    assert _state(agent, run_id) == "awaiting_approval"
    assert read_log(log) == []

    code, out = cli("approve", approver, run_id)
    assert code == 0, out
    assert f"web-1: ok accepted: run {run_id} approved" in out
    until(lambda: _state(agent, run_id) == "succeeded", "the approved run", agent)
    [line] = read_log(log)
    assert (line["run"], line["note"]) == (run_id, "approved")
    [approved] = events(agent, "io.nodemedic.remediation.approved")
    assert "approver" in approved["data"]["by"]

    # At its deadline a run nobody approved is skipped with an event; it cannot be
    # approved any more.
    late = runner.sign(playbook="gated-short", params={"note": "late"})
    [reply] = send(broker, late, node="web-1")
    late_run = reply["run_id"]
    assert _awaiting(agent, late_run)["data"]["deadline"] > time.time() - 5
    until(lambda: _state(agent, late_run) == "skipped", "the run skipped at its deadline", agent)
    [skipped] = [
        e for e in events(agent, "io.nodemedic.remediation.skipped") if e["data"]["run"] == late_run
    ]
    assert skipped["data"]["gate"] == "approval"
    assert "no approval arrived before its deadline" in skipped["data"]["reason"]
    [reply] = send(broker, approver.sign(kind="approve", run_id=late_run), node="web-1")
    assert (reply["ok"], reply["reason"]) == (False, "unknown_run"), reply
    assert "no approval arrived before its deadline" in reply["detail"]
    assert [line["run"] for line in read_log(log)] == [run_id]
    assert healthy(agent)
    agent.stop()
