"""``nodemedic fleet`` against a real Mosquitto with three real agents connected to it.

One agent is healthy, one has a firing critical condition, one is SIGKILLed so the
broker publishes its will; the test itself retains a garbage status for a fourth node.
The operator's view must list the offline and unreadable nodes first, then the firing
one, then the healthy one, and name what was wrong with the garbage.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.brokers import (  # the fixtures are imported to register them in this module
    MosquittoBroker,
    mosquitto_factory_fixture,  # noqa: F401
    mosquitto_fixture,  # noqa: F401
    mqtt_pki_fixture,  # noqa: F401
)
from tests.conftest import AgentProcess, free_port, run_cli, until
from tests.integration.test_status_cli import CORES_RULE, UTC_ENV, only_cpu

pytestmark = pytest.mark.mosquitto


def mqtt_section(broker: MosquittoBroker, prefix: str) -> dict[str, Any]:
    """The ``mqtt`` section for the anonymous listener, reconnecting fast."""
    return {
        "url": broker.url("anon"),
        "topic_prefix": prefix,
        "reconnect_min": "100ms",
        "reconnect_max": "500ms",
        "connect_timeout": "2s",
        "keepalive": "5s",
    }


def operator_config(tmp_path: Path, mqtt: dict[str, Any]) -> Path:
    """The operator's own configuration: just the broker and the prefix."""
    path = tmp_path / "operator.yaml"
    path.write_text(yaml.safe_dump({"mqtt": mqtt}), encoding="utf-8")
    return path


def retain(broker: MosquittoBroker, topic: str, payload: str) -> None:
    """Publish a retained message with ``mosquitto_pub``, as any client of the broker could."""
    subprocess.run(
        ["mosquitto_pub", *broker.cli_args(), "-r", "-q", "1", "-t", topic, "-m", payload],
        check=True,
        timeout=10,
    )


def fleet_json(config: Path) -> dict[str, Any]:
    """``nodemedic fleet --json``, decoded; it must succeed."""
    result = run_cli("fleet", "--config", str(config), "--json", "--timeout", "10")
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_fleet_lists_offline_and_unreadable_nodes_first_then_firing_then_healthy(
    mosquitto: MosquittoBroker,
    agent_factory: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}/v1"
    mqtt = mqtt_section(mosquitto, prefix)
    specs = {"node-a": [], "node-b": [CORES_RULE], "node-c": []}
    agents = {
        name: agent_factory(
            {"node": {"name": name}, "mqtt": mqtt, "probes": only_cpu(), "rules": rules}, name
        )
        for name, rules in specs.items()
    }
    for agent in agents.values():
        agent.start()
    for agent in agents.values():
        agent.wait_ready()
    config = operator_config(tmp_path, mqtt)

    def settled() -> dict[str, Any] | None:
        nodes = {n["node"]: n for n in fleet_json(config)["nodes"]}
        online = all(nodes.get(name, {}).get("status") == "online" for name in agents)
        return nodes if online and nodes["node-b"]["firing"] else None

    until(settled, "three online nodes, node-b firing", agents["node-b"])
    agents["node-c"].kill()  # SIGKILL: no DISCONNECT, the broker publishes node-c's will
    retain(mosquitto, f"{prefix}/nodes/node-z/status", "{garbage")
    until(
        lambda: (
            {n["node"]: n["status"] for n in fleet_json(config)["nodes"]}.get("node-c") == "offline"
        ),
        "node-c's will",
        agents["node-a"],
    )

    result = run_cli("fleet", "--config", str(config), "--timeout", "10", env=UTC_ENV)
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"FLEET {prefix} at ")
    assert lines[0].endswith(
        "UTC: 4 nodes, 2 offline or unknown, 1 with firing conditions or unreadable, 1 healthy"
    )
    assert re.split(r"\s{2,}", lines[1]) == ["NODE", "STATUS", "SINCE", "CONDITIONS", "VERSION"]
    rows = {line.split()[0]: line for line in lines[2:6]}
    assert list(rows) == ["node-c", "node-z", "node-b", "node-a"]
    assert lines[6:8] == ["", "UNREADABLE RETAINED MESSAGES"]
    assert lines[8].startswith("  node-z: status: not JSON (")
    assert lines[8].endswith("): b'{garbage'")
    assert re.search(
        r"OFFLINE \(connection lost\) +after \d\d:\d\d:\d\d UTC \(last seen \d+s ago\) +"
        r"none firing",
        rows["node-c"],
    ), rows["node-c"]
    assert "UNKNOWN (unreadable status, see below)" in rows["node-z"]
    assert re.search(
        r"online +\d\d:\d\d:\d\d UTC \(\d+s ago\) +1 FIRING: critical cores-present", rows["node-b"]
    )
    assert re.search(r"online +\d\d:\d\d:\d\d UTC \(\d+s ago\) +none firing +\d", rows["node-a"])

    document = fleet_json(config)
    assert list(document) == ["prefix", "read_at", "complete", "nodes"]
    assert document["prefix"] == prefix
    assert document["complete"] is True
    nodes = document["nodes"]
    assert [n["node"] for n in nodes] == ["node-c", "node-z", "node-b", "node-a"]
    assert (nodes[0]["status"], nodes[0]["reason"]) == ("offline", "connection lost")
    assert nodes[0]["last_seen"] is not None
    assert nodes[1]["status"] == "unknown"
    assert nodes[1]["problems"][0].startswith("status: not JSON (")
    assert [c["name"] for c in nodes[2]["firing"]] == ["cores-present"]
    assert nodes[3]["firing"] == []

    # The status command sees the same agent's link to the broker.
    status = run_cli("status", "--config", str(agents["node-a"].config_path), env=UTC_ENV)
    assert status.returncode == 0, status.stderr
    assert f"BROKER       connected to {mosquitto.url('anon')} (outbox 0 events)" in status.stdout

    # A clean stop says so, with the moment it happened.
    code, _ = agents["node-b"].stop()
    assert code == 0
    stopped = until(
        lambda: (
            next(n for n in fleet_json(config)["nodes"] if n["node"] == "node-b")["reason"]
            == "stopped"
        ),
        "node-b's clean offline message",
        agents["node-a"],
    )
    assert stopped
    result = run_cli("fleet", "--config", str(config), env=UTC_ENV)
    row = next(line for line in result.stdout.splitlines() if line.startswith("node-b "))
    assert re.search(r"OFFLINE \(stopped\) +\d\d:\d\d:\d\d UTC \(\d+s ago\)", row), row


def test_an_unreachable_broker_or_no_broker_is_a_clear_error(tmp_path: Path) -> None:
    port = free_port()
    config = operator_config(tmp_path, {"url": f"mqtt://127.0.0.1:{port}", "connect_timeout": "2s"})
    result = run_cli("fleet", "--config", str(config))
    assert result.returncode == 69
    assert f"cannot read the fleet from the broker: cannot reach mqtt://127.0.0.1:{port}" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    bare = tmp_path / "bare.yaml"
    bare.write_text("node: {name: x}\n", encoding="utf-8")
    result = run_cli("fleet", "--config", str(bare))
    assert result.returncode == 78
    assert "mqtt.url is not set in the configuration" in result.stderr


def test_fleet_connects_with_the_agents_credentials_and_client_certificate(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}/v1"
    online = '{"state":"online","session":"s1","version":"9.9","since":"2026-11-29T22:00:00Z"}'
    retain(mosquitto, f"{prefix}/nodes/edge-1/status", online)
    files = {
        "ca_file": str(mosquitto.ca_cert),
        "cert_file": str(mosquitto.client_cert),
        "key_file": str(mosquitto.client_key),
    }
    tls = {"url": mosquitto.url("tls"), "topic_prefix": prefix, "tls": files}
    password = {
        "url": mosquitto.url("password"),
        "topic_prefix": prefix,
        "username": mosquitto.username,
        "password": mosquitto.good_password,
    }
    for mqtt in (tls, password):
        document = fleet_json(operator_config(tmp_path, mqtt))
        assert [(n["node"], n["status"], n["version"]) for n in document["nodes"]] == [
            ("edge-1", "online", "9.9")
        ]
    wrong = {**password, "password": mosquitto.bad_password}
    result = run_cli("fleet", "--config", str(operator_config(tmp_path, wrong)))
    assert result.returncode == 69
    assert "refused the credentials" in result.stderr
    assert mosquitto.bad_password not in result.stderr
    foreign = {
        **tls,
        "tls": {
            **files,
            "cert_file": str(mosquitto.foreign_client_cert),
            "key_file": str(mosquitto.foreign_client_key),
        },
    }
    result = run_cli("fleet", "--config", str(operator_config(tmp_path, foreign)))
    assert result.returncode == 69
    assert "TLS" in result.stderr
    assert "Traceback" not in result.stderr


def test_under_the_sample_acl_operators_see_the_fleet_and_a_node_sees_none(
    mosquitto_factory: Callable[..., MosquittoBroker], tmp_path: Path
) -> None:
    from tests.integration.test_mosquitto_acl import ACL, USERS

    broker = mosquitto_factory(persistence=False, acl_file=ACL, users=USERS)
    prefix = "nodemedic/v1"  # the sample ACL's
    retain(broker, f"{prefix}/nodes/web-1/status", '{"state":"online","session":"s"}')

    def config(user: str) -> Path:
        return operator_config(
            tmp_path,
            {
                "url": broker.url("password"),
                "topic_prefix": prefix,
                "username": user,
                "password": USERS[user],
            },
        )

    for user in ("operator", "monitor"):
        assert [n["node"] for n in fleet_json(config(user))["nodes"]] == ["web-1"]
    # Mosquitto grants a wildcard subscription and filters what the ACL forbids (brokers
    # that refuse the subscription get "refused the subscription ...; check its ACL").
    result = run_cli("fleet", "--config", str(config("web-2")))
    assert result.returncode == 0, result.stderr
    assert "0 nodes" in result.stdout
    assert "that this user may read (check mqtt.topic_prefix and the broker's ACL)" in (
        result.stdout
    )
