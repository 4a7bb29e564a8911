"""Refused remote commands, against a real agent on a real Mosquitto.

Each refusal must show three things a user would check: nothing ran (no new run, the
playbook's recording step wrote nothing), a reason was given (the reply to the response
topic and an ``io.nodemedic.command.rejected`` event) and the agent stayed up. The
playbook is in enforce mode with a harmless recording step, so a run would be visible as
a line in a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import (  # noqa: F401
    BrokerFactory,
    mosquitto_factory_fixture,
    mqtt_pki_fixture,
)
from tests.conftest import until
from tests.remediation_actions import read_log
from tests.remote_fleet import (  # noqa: F401
    AgentFactory,
    Operator,
    RemoteAgent,
    events,
    healthy,
    playbook,
    remote_agents_fixture,
    runs,
    send,
)

pytestmark = [pytest.mark.mosquitto]


def _tampered(payload: bytes) -> bytes:
    body = json.loads(payload)
    body["command"]["target"] = "sshd.service"  # the signature covered demo.service
    return json.dumps(body).encode()


def _refused(agent: RemoteAgent, reply: dict[str, Any], reason: str, log: Path) -> None:
    assert (reply["ok"], reply["reason"], reply["node"]) == (False, reason, agent.node), reply
    assert reply["detail"]
    rejected = until(
        lambda: [
            e
            for e in events(agent, "io.nodemedic.command.rejected")
            if e["data"]["reason"] == reason and e["data"].get("nonce") == reply.get("nonce")
        ],
        f"a rejected event for {reason}",
        agent,
    )
    assert rejected[-1]["data"]["detail"] == reply["detail"]
    assert rejected[-1]["data"]["via"] == f"mqtt:nodemedic/v1/nodes/{agent.node}/commands"
    assert len(runs(agent)) == 1, "a refused command started a run"
    assert len(read_log(log)) == 1, "a refused command ran a step"
    assert healthy(agent)


def test_refused_commands_run_nothing_say_why_and_leave_the_agent_up(
    tmp_path: Path, mosquitto_factory: BrokerFactory, remote_agents: AgentFactory
) -> None:
    broker = mosquitto_factory(persistence=False)
    keys = tmp_path / "keys"
    ops = Operator.create(keys, "ops", playbooks=["record-*"], params=["note"])
    stranger = Operator.create(keys, "stranger", playbooks=["*"])
    log = tmp_path / "steps.log"
    agent = remote_agents(
        "web-1",
        broker=broker,
        operators=[ops],  # the stranger's key is not trusted
        playbooks=[
            playbook("record-note", mode="enforce", log=log),
            playbook("other-thing", mode="enforce", log=log),
        ],
    ).start_ready()
    until(agent.subscribed, "the MQTT session", agent)

    def run(**fields: Any) -> dict[str, Any]:
        return {"playbook": "record-note", "target": "demo.service", "params": fields}

    good = ops.sign(**run(note="once"))
    [accepted] = send(broker, good, node="web-1")
    assert accepted["ok"], accepted
    until(lambda: read_log(log), "the accepted run's step", agent)
    assert [line["note"] for line in read_log(log)] == ["once"]

    now = accepted_at = int(json.loads(good)["command"]["issued_at"])
    cases = {
        "replayed": good,
        "expired": ops.sign(**run(note="late"), issued_at=now - 120, expires_at=now - 60),
        "unknown_key": stranger.sign(**run(note="stranger")),
        "bad_signature": _tampered(ops.sign(**run(note="tampered"))),
        "wrong_node": ops.sign(**run(note="web-2"), selector={"nodes": ["web-2"]}),
        "not_allowed": ops.sign(playbook="other-thing", target="demo.service"),
    }
    for reason, payload in cases.items():
        [reply] = send(broker, payload, node="web-1")
        _refused(agent, reply, reason, log)

    # The nonce cache is in the state database: a restart does not forget it.
    agent.stop()
    agent.start_ready()
    until(agent.subscribed, "the MQTT session after the restart", agent)
    assert int(json.loads(good)["command"]["expires_at"]) > accepted_at  # still in date
    [reply] = send(broker, good, node="web-1")
    _refused(agent, reply, "replayed", log)
    agent.stop()
