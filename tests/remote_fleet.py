"""Agents with remote control on a real Mosquitto, for the remote command tests.

Each agent is a real ``nodemedic run`` process with every probe off (nothing to sample:
the tests are about commands), a remote-triggerable playbook in its own playbooks dir,
the recording actions of :mod:`tests.remediation_actions`, trusted keys written by
:func:`agent.commands.generate_keypair` (what ``nodemedic keys generate`` calls), and the
broker's anonymous listener. Commands are signed here with the operator's private keys,
or by the real ``nodemedic trigger`` CLI.
"""

from __future__ import annotations

__all__ = [
    "ENV",
    "AgentFactory",
    "Operator",
    "RemoteAgent",
    "events",
    "healthy",
    "playbook",
    "remote_agents_fixture",
    "rss_kib",
    "runs",
    "send",
    "token",
    "until",
]

import asyncio
import json
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.commands import (
    Command,
    generate_keypair,
    load_private_key,
    new_nonce,
    sign_command,
)
from agent.config import MqttConfig
from agent.config_remote import hash_token
from agent.mqtt import send_command
from agent.probes.catalog import PROBE_NAMES
from agent.topics import Topics
from tests.brokers import MosquittoBroker
from tests.conftest import REPO, AgentProcess, http_get, http_json, until

ENV = {"PYTHONPATH": str(REPO)}
PREFIX = "nodemedic/v1"
ALL_PROBES_OFF = {name: {"enabled": False} for name in PROBE_NAMES}


def events(agent: AgentProcess, type_: str) -> list[dict[str, Any]]:
    """The agent's recorded events of ``type_`` (exact, or a prefix ending in ``*``)."""
    body = http_json(f"{agent.url}/v1/events?type={type_}&limit=1000")
    found: list[dict[str, Any]] = body["events"]
    return found


def runs(agent: AgentProcess) -> list[dict[str, Any]]:
    """The agent's remediation runs, newest first."""
    found: list[dict[str, Any]] = http_json(f"{agent.url}/v1/runs")["runs"]
    return found


def healthy(agent: AgentProcess) -> bool:
    """The process runs and /healthz answers 200."""
    assert agent.proc is not None
    if agent.proc.poll() is not None:
        return False
    try:
        status, _ = http_get(agent.url + "/healthz", timeout=10.0)
    except OSError:
        return False
    return status == 200


def rss_kib(agent: AgentProcess) -> int:
    """The agent's resident set size (VmRSS of /proc/PID/status) in KiB."""
    assert agent.proc is not None
    for line in Path(f"/proc/{agent.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


def playbook(
    name: str, *, mode: str, log: Path, approval: str = "none", approval_timeout: str = "1h"
) -> dict[str, Any]:
    """A remote-triggerable playbook of one harmless recording step.

    Its note is the ``note`` parameter of the command (a ``{labels.note}`` placeholder);
    cooldown and rate limit are out of the way so a test may run it many times (the
    loop guard, at its default, never counts an operator's run as the condition's return).
    """
    return {
        "name": name,
        "mode": mode,
        "trigger": {"remote": True},
        "target": "demo.service",
        "steps": [{"action": "test.record", "params": {"log": str(log), "note": "{labels.note}"}}],
        "safety": {
            "cooldown": "0s",
            "max_runs": {"count": 1000, "per": "1h"},
            "approval": approval,
            "approval_timeout": approval_timeout,
        },
    }


@dataclass
class Operator:
    """An operator's signing key: the private file and the policy the agents give it."""

    name: str
    key_file: Path
    public_key: str
    policy: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, directory: Path, name: str, **policy: Any) -> Operator:
        """A new key pair in ``directory`` (as ``nodemedic keys generate`` writes it)."""
        key_file, pub_file = generate_keypair(directory, name)
        return cls(name, key_file, pub_file.read_text().strip(), dict(policy))

    def trusted(self) -> dict[str, Any]:
        """The agent's ``remote.keys`` entry for this key."""
        return {"id": self.name, "public_key": self.public_key, **self.policy}

    def command(self, **fields: Any) -> Command:
        """A command by this key, valid for a minute from now unless ``fields`` say else."""
        now = int(time.time())
        values: dict[str, Any] = {
            "key_id": self.name,
            "issuer": "tester@bench",
            "selector": {"nodes": []},
            "kind": "run",
            "issued_at": now,
            "expires_at": now + 60,
            "nonce": new_nonce(),
        }
        values.update(fields)
        return Command.model_validate(values)

    def sign(self, **fields: Any) -> bytes:
        """The wire form of :meth:`command`, signed with this key."""
        return sign_command(self.command(**fields), load_private_key(self.key_file))


class RemoteAgent(AgentProcess):
    """A ``nodemedic run`` on ``broker`` with remote control set up."""

    def __init__(
        self,
        workdir: Path,
        *,
        node: str,
        broker: MosquittoBroker | None,
        operators: Sequence[Operator],
        playbooks: Sequence[Mapping[str, Any]],
        labels: Mapping[str, str] | None = None,
        tokens: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        books = workdir / "playbooks"
        books.mkdir(parents=True, exist_ok=True)
        for book in playbooks:
            (books / f"{book['name']}.yaml").write_text(json.dumps(book), encoding="utf-8")
        settings: dict[str, Any] = {
            "node": {"name": node, "labels": dict(labels or {})},
            "log": {"level": "info"},
            "probes": ALL_PROBES_OFF,
            "rules": [],
            "remediation": {
                "playbooks_dir": str(books),
                "builtin_playbooks": False,
                "action_modules": ["tests.remediation_actions"],
                "pause_file": str(workdir / "pause"),
            },
            "remote": {
                "keys": [operator.trusted() for operator in operators],
                # A token is configured as the SHA-256 of its value, never the value.
                "api_tokens": [
                    {
                        **{k: v for k, v in token.items() if k != "token"},
                        "sha256": hash_token(token["token"]),
                    }
                    for token in tokens
                ],
            },
        }
        if broker is not None:
            settings["mqtt"] = {"url": broker.url("anon"), "reconnect_max": "1s"}
        super().__init__(workdir, settings)
        self.node = node
        self.settings = settings

    def start_ready(self) -> RemoteAgent:
        """Start it and wait until it answers /readyz."""
        self.start(env=ENV)
        self.wait_ready(timeout=60.0)
        return self

    def subscribed(self) -> bool:
        """The agent's MQTT session is up (its command subscriptions follow the CONNACK)."""
        body = http_json(self.url + "/readyz")
        return bool(body.get("mqtt", {}).get("state") == "connected")


AgentFactory = Callable[..., RemoteAgent]


@pytest.fixture(name="remote_agents")
def remote_agents_fixture(tmp_path: Path) -> Iterator[AgentFactory]:
    """Make :class:`RemoteAgent` instances (``node`` names the workdir too); every one is
    killed at the end of the test."""
    made: list[RemoteAgent] = []

    def make(node: str, **options: Any) -> RemoteAgent:
        agent = RemoteAgent(tmp_path / node, node=node, **options)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.kill()


def mqtt_config(broker: MosquittoBroker) -> MqttConfig:
    """An MQTT section for an operator's client on ``broker``."""
    return MqttConfig.model_validate({"url": broker.url("anon")})


def send(
    broker: MosquittoBroker,
    payload: bytes,
    *,
    node: str | None = None,
    wait: float = 20.0,
    expect: int = 1,
    expiry: int = 60,
) -> list[dict[str, Any]]:
    """Publish ``payload`` to ``node``'s command topic (or the fleet's); the replies."""
    topics = Topics(PREFIX, node or "-")
    topic = topics.commands if node else topics.fleet_commands

    async def collect() -> list[dict[str, Any]]:
        replies: list[dict[str, Any]] = []
        stream = send_command(
            mqtt_config(broker), topic=topic, payload=payload, expiry=expiry, wait=wait
        )
        async for reply in stream:
            replies.append(reply)
            if len(replies) >= expect:
                break
        await stream.aclose()
        return replies

    return asyncio.run(collect())


def token() -> str:
    """A fresh API token value."""
    return secrets.token_urlsafe(32)
