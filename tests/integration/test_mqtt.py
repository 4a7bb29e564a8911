"""Publishing to a real Mosquitto: order, envelopes, retained state, outages, crashes, auth.

The brokers come from ``tests/brokers.py`` (anonymous, password and TLS-with-client-cert
listeners on ephemeral loopback ports, persistence on). The agent runs as a real
``nodemedic run`` process where the point is about the process (SIGKILL, restart,
/readyz); where the point is volume (10,000 events), it runs in-process with a fast
probe whose series flap across a ``for: 0`` rule, so every event is a real condition
transition produced by the real rules engine and store.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio
from cloudevents.core.formats.json import JSONFormat

from agent.config import AgentSettings, RuleConfig
from agent.model import Sample
from agent.runtime import Agent
from tests.brokers import (  # the fixtures are imported to register them in this module
    MosquittoBroker,
    mosquitto_factory_fixture,  # noqa: F401
    mosquitto_fixture,  # noqa: F401
    mqtt_pki_fixture,  # noqa: F401
)
from tests.conftest import AgentProcess, http_get, run_cli

pytestmark = pytest.mark.mosquitto

EVENT_TYPES = re.compile(r"^io\.nodemedic\.[a-z]+\.[a-z]+$")
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
CE_ATTRIBUTE = re.compile(r"^[a-z0-9]{1,20}$")


def check_cloudevent(event: dict[str, Any]) -> None:
    """Check a structured-mode JSON CloudEvent with the CloudEvents SDK and the spec's rules.

    The constraints of the spec's JSON schema (``cloudevents/formats/cloudevents.json``):
    required ``id``, ``source``, ``specversion`` = "1.0" and ``type``, non-empty strings;
    ``time`` an RFC 3339 timestamp; ``datacontenttype`` a media type; ``subject`` a
    non-empty string; attribute names lower-case alphanumeric (at most 20 characters).
    """
    # The CloudEvents SDK parses the structured JSON and validates the required attributes.
    parsed = JSONFormat().read(None, json.dumps(event).encode()).get_attributes()
    assert parsed["id"] == event["id"]
    assert parsed["sequence"] == event["sequence"]
    assert parsed["time"].tzinfo is not None
    for required in ("id", "source", "specversion", "type"):
        assert isinstance(event.get(required), str), f"{required} missing: {event}"
        assert event[required], f"{required} empty: {event}"
    assert event["specversion"] == "1.0"
    assert event["source"].startswith("nodemedic://")
    assert EVENT_TYPES.match(event["type"]), event["type"]
    assert RFC3339.match(event["time"]), event["time"]
    assert event["datacontenttype"] == "application/json"
    if "subject" in event:
        assert isinstance(event["subject"], str)
        assert event["subject"]
    assert isinstance(event["data"], dict)
    for name in event:
        assert CE_ATTRIBUTE.match(name), f"attribute name {name!r} breaks the spec"
    assert isinstance(event["sequence"], int)
    assert event["sequence"] >= 1


class Subscriber:
    """An aiomqtt subscriber collecting every message, with a persistent session if asked."""

    def __init__(
        self,
        broker: MosquittoBroker,
        topic: str,
        *,
        persistent: bool = False,
        identifier: str | None = None,
    ) -> None:
        self.broker = broker
        self.topic = topic
        self.persistent = persistent
        self.identifier = identifier or f"test-sub-{uuid.uuid4().hex[:8]}"
        self.messages: list[tuple[str, bytes, bool]] = []
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        """Connect (and reconnect after a broker restart) in the background."""
        self._task = asyncio.create_task(self._run(), name="test-subscriber")

    async def _run(self) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 600 if self.persistent else 0
        while not self._stop.is_set():
            client = aiomqtt.Client(
                self.broker.host,
                self.broker.port("anon"),
                identifier=self.identifier,
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=not self.persistent,
                properties=properties,
                keepalive=5,
                timeout=3,
            )
            try:
                async with client:
                    await client.subscribe(self.topic, qos=1)
                    async for message in client.messages:
                        payload = message.payload
                        assert isinstance(payload, bytes)
                        self.messages.append((str(message.topic), payload, message.retain))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """Disconnect."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await self._task

    def events(self) -> list[dict[str, Any]]:
        """Every event received, decoded, in arrival order (duplicates included)."""
        return [json.loads(payload) for topic, payload, _ in self.messages if "/events/" in topic]

    def unique_sequences(self) -> list[int]:
        """Sequences in arrival order after removing duplicates by id."""
        seen: set[str] = set()
        out: list[int] = []
        for event in self.events():
            if event["id"] not in seen:
                seen.add(event["id"])
                out.append(event["sequence"])
        return out


async def until(predicate: Callable[[], bool], limit: float, what: str) -> None:
    """Wait for ``predicate`` (polled every 50 ms) or fail naming ``what``."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {limit}s waiting for {what}")
        await asyncio.sleep(0.05)


async def retained(broker: MosquittoBroker, topic: str, limit: float = 5.0) -> dict[str, Any]:
    """The retained message on ``topic``, decoded."""
    async with aiomqtt.Client(broker.host, broker.port("anon"), timeout=3) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(limit):
            async for message in client.messages:
                assert message.retain
                payload = message.payload
                assert isinstance(payload, bytes)
                decoded: dict[str, Any] = json.loads(payload)
                return decoded
    pytest.fail(f"no retained message on {topic}")


def mqtt_settings(broker: MosquittoBroker, prefix: str, **more: Any) -> dict[str, Any]:
    """An ``mqtt`` section for the anonymous listener with fast reconnects."""
    return {
        "url": broker.url("anon"),
        "topic_prefix": prefix,
        "reconnect_min": "100ms",
        "reconnect_max": "500ms",
        "connect_timeout": "2s",
        "keepalive": "5s",
        **more,
    }


def quiet_probes(*enabled: str) -> dict[str, Any]:
    """Every probe disabled except ``enabled`` (at 200 ms)."""
    from agent.probes.catalog import PROBE_NAMES

    return {
        name: {"enabled": name in enabled, **({"interval": "200ms"} if name in enabled else {})}
        for name in PROBE_NAMES
    }


CORES_RULE = {
    "name": "cores-present",
    "metric": "nodemedic_cpu_cores",
    "op": ">",
    "threshold": 0,
    "severity": "warning",
}


async def wait_ready_async(agent: AgentProcess) -> None:
    """AgentProcess.wait_ready off the event loop, so subscribers keep running."""
    await asyncio.to_thread(agent.wait_ready)


def readyz(agent: AgentProcess) -> tuple[int, dict[str, Any]]:
    """(status, body) of GET /readyz."""
    status, body = http_get(agent.url + "/readyz")
    return status, json.loads(body)


# --- order, envelopes, retained state, the will ------------------------------------


@pytest.mark.asyncio
async def test_events_arrive_in_order_as_cloudevents_with_retained_status_and_will(
    mosquitto: MosquittoBroker, agent_factory: Callable[..., AgentProcess]
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}/v1"
    subscriber = Subscriber(mosquitto, f"{prefix}/nodes/node-a/#")
    subscriber.start()
    await asyncio.sleep(0.3)
    agent = agent_factory(
        {
            "node": {"name": "node-a"},
            "mqtt": mqtt_settings(mosquitto, prefix),
            "probes": quiet_probes("cpu"),
            "rules": [CORES_RULE],
        }
    )
    agent.start()
    await wait_ready_async(agent)
    await until(
        lambda: any(e["type"] == "io.nodemedic.condition.firing" for e in subscriber.events()),
        10,
        "the condition event",
    )

    events = subscriber.events()
    for event in events:
        check_cloudevent(event)
    sequences = [e["sequence"] for e in events]
    assert sequences == list(range(1, len(events) + 1))
    assert [e["type"] for e in events[:2]] == [
        "io.nodemedic.agent.started",
        "io.nodemedic.condition.firing",
    ]
    assert all(e["source"] == "nodemedic://node-a" for e in events)
    topics = [topic for topic, _, _ in subscriber.messages if "/events/" in topic]
    assert topics[0] == f"{prefix}/nodes/node-a/events/io.nodemedic.agent.started"

    status = await retained(mosquitto, f"{prefix}/nodes/node-a/status")
    assert set(status) == {"state", "session", "version", "since"}
    assert RFC3339.match(status["since"])
    assert status["state"] == "online"
    session = status["session"]
    conditions = await retained(mosquitto, f"{prefix}/nodes/node-a/conditions")
    assert conditions["node"] == "node-a"
    assert conditions["firing"] == 1
    assert [(c["name"], c["state"]) for c in conditions["conditions"]] == [
        ("cores-present", "firing")
    ]
    _, ready = readyz(agent)
    assert ready["mqtt"]["state"] == "connected"
    assert ready["mqtt"]["session"] == session

    agent.kill()  # SIGKILL: no DISCONNECT, so the broker publishes the will
    await until(
        lambda: any(
            topic.endswith("/status") and json.loads(payload)["state"] == "offline"
            for topic, payload, _ in subscriber.messages
        ),
        10,
        "the offline will",
    )
    will = await retained(mosquitto, f"{prefix}/nodes/node-a/status")
    assert will == {
        "state": "offline",
        "session": session,
        "reason": "connection lost",
        "session_started": will["session_started"],
    }
    assert RFC3339.match(will["session_started"])
    await subscriber.stop()


@pytest.mark.asyncio
async def test_a_clean_stop_flushes_and_publishes_offline_without_the_will(
    mosquitto: MosquittoBroker, agent_factory: Callable[..., AgentProcess]
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}/v1"
    subscriber = Subscriber(mosquitto, f"{prefix}/nodes/node-b/#")
    subscriber.start()
    await asyncio.sleep(0.3)
    agent = agent_factory(
        {
            "node": {"name": "node-b"},
            "mqtt": mqtt_settings(mosquitto, prefix, protocol="3.1.1"),
            "probes": quiet_probes("cpu"),
            "rules": [CORES_RULE],
        }
    )
    agent.start()
    await wait_ready_async(agent)
    code, took = await asyncio.to_thread(agent.stop, signal.SIGTERM)
    assert code == 0
    assert took < 5

    await until(
        lambda: any(e["type"] == "io.nodemedic.agent.stopping" for e in subscriber.events()),
        5,
        "the stopping event",
    )
    status = await retained(mosquitto, f"{prefix}/nodes/node-b/status")
    assert status["state"] == "offline"
    statuses = [json.loads(p) for t, p, _ in subscriber.messages if t.endswith("/status")]
    assert [s["state"] for s in statuses] == ["online", "offline"]  # no will on top
    assert statuses[1]["reason"] == "stopped"
    assert statuses[0]["session"] == statuses[1]["session"]
    assert subscriber.unique_sequences() == list(range(1, len(subscriber.unique_sequences()) + 1))
    await subscriber.stop()


# --- 10,000 events through a broker outage ------------------------------------------


class FlappingSensors:
    """A probe whose ``count`` temperature series cross the rule's threshold every run.

    With the rule's ``for: 0`` every run turns each series' condition firing or resolved,
    so each run yields ``count`` real condition events.
    """

    name = "sensors"
    timeout = 1.0

    def __init__(self, count: int, interval: float = 0.05) -> None:
        self.count = count
        self.interval = interval
        self.runs = 0
        self.paused = False

    async def sample(self) -> Sequence[Sample]:
        """Hot on odd runs, cool on even ones (while not paused)."""
        if not self.paused:
            self.runs += 1
        value = 90.0 if self.runs % 2 else 20.0
        return [
            Sample.of("nodemedic_temperature_celsius", value, chip="test", sensor=f"s{n}")
            for n in range(self.count)
        ]

    def close(self) -> None:
        """Nothing to release."""


HOT_RULE = RuleConfig.model_validate(
    {
        "name": "sensor-hot",
        "metric": "nodemedic_temperature_celsius",
        "op": ">",
        "threshold": 50,
        "severity": "info",
    }
)


def in_process_settings(tmp_path: Path, broker_url: str, prefix: str, **mqtt: Any) -> AgentSettings:
    """Settings for an in-process agent publishing to ``broker_url``."""
    return AgentSettings.model_validate(
        {
            "node": {"name": "node-c"},
            "state_dir": tmp_path / "state",
            "api": {"enabled": False},
            "history": {"max_events": 1000},
            "conditions": {"flap_window": "1ms", "flap_limit": 1000000},
            "mqtt": {
                "url": broker_url,
                "topic_prefix": prefix,
                "reconnect_min": "100ms",
                "reconnect_max": "500ms",
                "connect_timeout": "2s",
                "keepalive": "5s",
                **mqtt,
            },
            "rules": [HOT_RULE.model_dump(by_alias=True)],
        }
    )


@pytest_asyncio.fixture
async def running_agents() -> AsyncIterator[list[tuple[Agent, asyncio.Task[None]]]]:
    """Agents started by a test; stopped at its end."""
    agents: list[tuple[Agent, asyncio.Task[None]]] = []
    yield agents
    for agent, task in agents:
        agent.request_stop()
        await asyncio.wait_for(task, 10)


@pytest.mark.asyncio
async def test_ten_thousand_events_survive_a_broker_outage_in_order(
    mosquitto: MosquittoBroker,
    tmp_path: Path,
    running_agents: list[tuple[Agent, asyncio.Task[None]]],
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}/v1"
    subscriber = Subscriber(mosquitto, f"{prefix}/nodes/node-c/events/#", persistent=True)
    subscriber.start()
    await asyncio.sleep(0.3)
    probe = FlappingSensors(count=500)
    probe.paused = True
    agent = Agent(in_process_settings(tmp_path, mosquitto.url("anon"), prefix), probes=[probe])
    task = asyncio.create_task(agent.run())
    running_agents.append((agent, task))
    await until(lambda: bool((s := agent.mqtt_status()) and s.connected), 10, "the connection")

    await asyncio.to_thread(mosquitto.stop)
    probe.paused = False
    await until(lambda: probe.runs >= 22, 30, "22 flapping runs (11,000 events)")
    probe.paused = True
    status = agent.mqtt_status()
    assert status is not None
    assert not status.connected
    assert status.outbox_depth >= 10_000
    produced = agent.events(type=None, since=None, limit=1)[0].sequence

    await asyncio.to_thread(mosquitto.start)
    await until(
        lambda: len(set(subscriber.unique_sequences())) >= produced,
        # About 4 s on an idle machine; generous so a busy CI host does not fail it.
        180,
        f"all {produced} events at the subscriber",
    )
    sequences = subscriber.unique_sequences()
    assert sequences[:produced] == list(range(1, produced + 1)), "gap or disorder"
    assert len(subscriber.events()) >= produced  # duplicates only as at-least-once allows
    await until(lambda: agent.mqtt_status().outbox_depth == 0, 10, "an empty outbox")  # type: ignore[union-attr]
    status = agent.mqtt_status()
    assert status is not None
    assert status.publishes["acked"] >= produced
    assert status.outbox_shed == 0
    await subscriber.stop()


# --- an agent crash with events in its outbox ---------------------------------------


@pytest.mark.asyncio
async def test_events_queued_when_the_agent_is_killed_are_delivered_after_restart(
    mosquitto: MosquittoBroker, agent_factory: Callable[..., AgentProcess]
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}/v1"
    subscriber = Subscriber(mosquitto, f"{prefix}/nodes/node-d/events/#", persistent=True)
    subscriber.start()
    await asyncio.sleep(0.3)
    await asyncio.to_thread(mosquitto.stop)  # the agent's events can only wait in the outbox
    agent = agent_factory(
        {
            "node": {"name": "node-d"},
            "mqtt": mqtt_settings(mosquitto, prefix),
            "probes": quiet_probes("cpu"),
            "rules": [CORES_RULE],
        }
    )
    agent.start()
    await wait_ready_async(agent)
    status, body = readyz(agent)
    assert status == 200, "an unreachable broker leaves the agent ready"
    assert body["mqtt"]["state"] == "disconnected"
    assert "cannot reach" in body["mqtt"]["reason"]
    queued = body["mqtt"]["outbox"]["depth"]
    assert queued >= 2  # agent.started and the condition event

    agent.kill()
    await asyncio.to_thread(mosquitto.start)
    agent.start()
    await wait_ready_async(agent)
    await until(
        lambda: (
            {e["type"] for e in subscriber.events()} >= {"io.nodemedic.agent.started"}
            and len(subscriber.unique_sequences()) >= queued + 1
        ),
        20,
        "the events queued before the kill",
    )
    sequences = subscriber.unique_sequences()
    assert sequences == list(range(1, len(sequences) + 1))
    started = [e for e in subscriber.events() if e["type"] == "io.nodemedic.agent.started"]
    assert len({e["id"] for e in started}) == 2  # one per run, the first from before the kill
    await subscriber.stop()


# --- a full outbox --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_full_outbox_sheds_info_events_first_counts_them_and_raises_the_condition(
    tmp_path: Path, running_agents: list[tuple[Agent, asyncio.Task[None]]]
) -> None:
    from tests.conftest import free_port

    nowhere = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens: every event waits
    settings = in_process_settings(tmp_path, nowhere, "t/v1", outbox={"max_events": 100})
    rules = (
        HOT_RULE,
        RuleConfig.model_validate(
            {
                "name": "event-outbox-full",
                "metric": "nodemedic_mqtt_outbox_used_ratio",
                "op": ">=",
                "threshold": 1,
                "clear": 0.9,
                "severity": "critical",
            }
        ),
    )
    settings = settings.model_copy(update={"rules": rules})
    probe = FlappingSensors(count=20)
    agent = Agent(settings, probes=[probe])
    task = asyncio.create_task(agent.run())
    running_agents.append((agent, task))
    await until(lambda: probe.runs >= 15, 20, "300 info events")
    await until(
        lambda: any(
            c.rule == "event-outbox-full" and c.state.value == "firing" for c in agent.conditions()
        ),
        10,
        "the outbox-full condition",
    )
    probe.paused = True
    await asyncio.sleep(0.3)
    status = agent.mqtt_status()
    assert status is not None
    produced = agent.events(type=None, since=None, limit=1)[0].sequence
    assert status.outbox_depth == 100
    assert status.outbox_shed == produced - 100
    assert status.outbox_used_ratio == 1.0
    store = agent._store  # the outbox's contents are the point here
    assert store is not None
    queued = [row.sequence for row in store.outbox_batch(after=0, limit=1000)]
    history = agent.events(type=None, since=0, limit=1000)
    assert [e.sequence for e in history] == list(range(1, produced + 1))
    critical = [e.sequence for e in history if e.data.get("severity") == "critical"]
    assert critical, "the outbox-full condition fired"
    assert history[critical[0] - 1].subject == "event-outbox-full"
    # The shed policy: every critical event stays; of the info events the newest stay.
    others = [e.sequence for e in history if e.sequence not in critical]
    assert queued == sorted(critical + others[-(100 - len(critical)) :])
    assert status.outbox_shed == len(others) - (100 - len(critical))


# --- refused credentials and certificates --------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("case", ["bad-password", "foreign-certificate"])
async def test_refused_credentials_are_reported_retried_slowly_and_not_ready(
    mosquitto: MosquittoBroker, agent_factory: Callable[..., AgentProcess], case: str
) -> None:
    mqtt: dict[str, Any] = {"topic_prefix": "t/v1", "auth_retry": "1s", "connect_timeout": "1s"}
    if case == "bad-password":
        mqtt |= {
            "url": mosquitto.url("password"),
            "username": mosquitto.username,
            "password": mosquitto.bad_password,
        }
        expected = "refused the credentials"
        kind = "auth"
    else:
        mqtt |= {
            "url": mosquitto.url("tls"),
            "tls": {
                "ca_file": str(mosquitto.ca_cert),
                "cert_file": str(mosquitto.foreign_client_cert),
                "key_file": str(mosquitto.foreign_client_key),
            },
        }
        expected = "TLS"
        kind = "tls"
    agent = agent_factory(
        {"node": {"name": "node-e"}, "mqtt": mqtt, "probes": quiet_probes("cpu"), "rules": []}
    )
    agent.start()
    deadline = time.monotonic() + 15
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            status, body = await asyncio.to_thread(readyz, agent)
        except OSError:
            status = 0
        if status == 503 and expected in body.get("reason", ""):
            break
        await asyncio.sleep(0.2)
    assert status == 503, body
    assert body["reason"].startswith("mqtt: ")
    assert expected in body["reason"]
    assert body["mqtt"]["state"] == "misconfigured"
    await asyncio.sleep(3)
    assert agent.proc is not None
    assert agent.proc.poll() is None, "the agent must not crash"
    _, metrics = http_get(agent.url + "/metrics")
    match = re.search(rf'nodemedic_mqtt_connect_failures_total{{reason="{kind}"}} (\S+)', metrics)
    assert match is not None, metrics
    attempts = float(match.group(1))
    assert 2 <= attempts <= 7, f"{attempts} attempts in ~4-5 s: not a slow, bounded retry"
    assert "nodemedic_mqtt_connected 0.0" in metrics
    assert expected in agent.log()
    if case == "bad-password":
        assert mosquitto.bad_password not in agent.log()


@pytest.mark.asyncio
@pytest.mark.parametrize("listener", ["password", "tls"])
async def test_good_credentials_and_certificates_connect(
    mosquitto: MosquittoBroker, agent_factory: Callable[..., AgentProcess], listener: str
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}/v1"
    mqtt: dict[str, Any] = {"topic_prefix": prefix, "url": mosquitto.url(listener)}  # type: ignore[arg-type]
    if listener == "password":
        mqtt |= {"username": mosquitto.username, "password": mosquitto.good_password}
    else:
        mqtt["tls"] = {
            "ca_file": str(mosquitto.ca_cert),
            "cert_file": str(mosquitto.client_cert),
            "key_file": str(mosquitto.client_key),
        }
    agent = agent_factory(
        {"node": {"name": "node-f"}, "mqtt": mqtt, "probes": quiet_probes("cpu"), "rules": []}
    )
    agent.start()
    await wait_ready_async(agent)
    await until(lambda: readyz(agent)[1]["mqtt"]["state"] == "connected", 10, "a connection")
    status = await retained(mosquitto, f"{prefix}/nodes/node-f/status")
    assert status["state"] == "online"


# --- events tail ----------------------------------------------------------------------


def tail_config(tmp_path: Path, broker: MosquittoBroker, prefix: str) -> Path:
    """A config file for ``nodemedic events tail`` on the anonymous listener."""
    config = tmp_path / "tail.yaml"
    config.write_text(
        json.dumps({"mqtt": {"url": broker.url("anon"), "topic_prefix": prefix}}),
        encoding="utf-8",
    )
    return config


@pytest.mark.asyncio
async def test_events_tail_prints_one_line_per_live_event(
    mosquitto: MosquittoBroker, agent_factory: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}/v1"
    config = tail_config(tmp_path, mosquitto, prefix)
    tail = asyncio.create_task(
        asyncio.to_thread(
            run_cli,
            "events",
            "tail",
            "--config",
            str(config),
            "--node",
            "node-g",
            "--type",
            "io.nodemedic.condition.*",
            "--count",
            "1",
        )
    )
    await asyncio.sleep(1.0)
    agent = agent_factory(
        {
            "node": {"name": "node-g"},
            "mqtt": mqtt_settings(mosquitto, prefix),
            "probes": quiet_probes("cpu"),
            "rules": [CORES_RULE],
        }
    )
    agent.start()
    result = await asyncio.wait_for(tail, 30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert re.match(
        r"^\S+Z node-g #2 io\.nodemedic\.condition\.firing cores-present "
        r"\{.*\"rule\":\"cores-present\"",
        lines[0],
    ), lines[0]


# --- failover -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_it_fails_over_to_the_next_broker_of_the_list(
    mosquitto: MosquittoBroker, agent_factory: Callable[..., AgentProcess]
) -> None:
    from tests.conftest import free_port

    prefix = f"t{uuid.uuid4().hex[:8]}/v1"
    dead = f"mqtt://127.0.0.1:{free_port()}"
    agent = agent_factory(
        {
            "node": {"name": "node-h"},
            "mqtt": mqtt_settings(mosquitto, prefix, url=[dead, mosquitto.url("anon")]),
            "probes": quiet_probes("cpu"),
            "rules": [],
        }
    )
    agent.start()
    await wait_ready_async(agent)
    await until(lambda: readyz(agent)[1]["mqtt"]["state"] == "connected", 10, "a connection")
    _, body = readyz(agent)
    assert body["mqtt"]["broker"] == mosquitto.url("anon")
    status = await retained(mosquitto, f"{prefix}/nodes/node-h/status")
    assert status["state"] == "online"
    _, metrics = http_get(agent.url + "/metrics")
    assert 'nodemedic_mqtt_connect_failures_total{reason="network"} 1.0' in metrics


# --- a broker ACL that refuses the node's publishes -----------------------------------


class AclBroker(MosquittoBroker):
    """The test broker with an ACL on its anonymous listener: writes only under ``allowed/``."""

    def _write_config(self) -> None:
        super()._write_config()
        acl = self.workdir / "acl"
        acl.write_text("topic write allowed/#\ntopic read #\n", encoding="utf-8")
        text = self.conf_path.read_text(encoding="utf-8")
        anon = f"listener {self.port_anon} {self.host}\nallow_anonymous true\n"
        assert anon in text
        self.conf_path.write_text(text.replace(anon, anon + f"acl_file {acl}\n"), encoding="utf-8")


@pytest.mark.asyncio
async def test_publishes_the_broker_refuses_stay_queued_and_make_the_agent_not_ready(
    tmp_path: Path, mqtt_pki: Any, agent_factory: Callable[..., AgentProcess]
) -> None:
    broker = AclBroker(tmp_path / "acl-broker", mqtt_pki)
    broker.start()
    try:
        agent = agent_factory(
            {
                "node": {"name": "node-i"},
                "mqtt": mqtt_settings(broker, "denied/v1", auth_retry="1s"),
                "probes": quiet_probes("cpu"),
                "rules": [CORES_RULE],
            }
        )
        agent.start()
        deadline = time.monotonic() + 15
        status, body = 0, dict[str, Any]()
        while time.monotonic() < deadline:
            try:
                status, body = await asyncio.to_thread(readyz, agent)
            except OSError:
                status = 0
            if status == 503 and "refused a publish" in body.get("reason", ""):
                break
            await asyncio.sleep(0.2)
        assert status == 503, body
        assert "not authorized" in body["reason"]
        assert "ACL" in body["reason"]
        assert body["mqtt"]["state"] == "misconfigured"
        assert body["mqtt"]["outbox"]["depth"] >= 2, "refused events must stay queued"
        _, metrics = http_get(agent.url + "/metrics")
        assert 'nodemedic_mqtt_publishes_total{result="acked"} 0.0' in metrics
    finally:
        broker.kill()
