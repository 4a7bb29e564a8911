"""Drain batches (``mqtt.drain_batch``) against a real Mosquitto and the real CLI.

A backlog queued while the broker was away goes out as CloudEvents batches (JSON arrays,
``application/cloudevents-batch+json``) on the node's ``batch`` topic; what is emitted
once connected goes one event per message as before. The agent runs in-process with the
flapping probe of ``test_mqtt`` so every queued event is a real condition transition.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.runtime import Agent
from agent.store import Store
from tests.brokers import (  # the fixtures are imported to register them in this module
    MosquittoBroker,
    mosquitto_factory_fixture,  # noqa: F401
    mosquitto_fixture,  # noqa: F401
    mqtt_pki_fixture,  # noqa: F401
)
from tests.conftest import NODEMEDIC
from tests.integration.test_mqtt import (
    FlappingSensors,
    Subscriber,
    check_cloudevent,
    in_process_settings,
    tail_config,
    until,
)

pytestmark = pytest.mark.mosquitto

SENTINEL = {
    "specversion": "1.0",
    "id": "sentinel",
    "source": "nodemedic://node-s",
    "type": "io.nodemedic.test.sentinel",
    "time": "2026-01-01T00:00:00Z",
    "sequence": 0,
    "data": {},
}


class ContentTypes:
    """A subscriber that records each message's topic level and MQTT 5 content type."""

    def __init__(self, broker: MosquittoBroker, topic: str) -> None:
        self.broker = broker
        self.topic = topic
        self.seen: set[tuple[str, str | None]] = set()
        self.ready = asyncio.Event()

    async def run(self) -> None:
        """Collect until cancelled."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        async with aiomqtt.Client(
            self.broker.host,
            self.broker.port("anon"),
            protocol=aiomqtt.ProtocolVersion.V5,
            properties=props,
            timeout=3,
        ) as client:
            await client.subscribe(self.topic, qos=1)
            self.ready.set()
            async for message in client.messages:
                kind = "batch" if str(message.topic).endswith("/batch") else "event"
                content = getattr(message.properties, "ContentType", None)
                self.seen.add((kind, content))


async def run_agent(agent: Agent) -> asyncio.Task[None]:
    """Start ``agent`` in the background."""
    return asyncio.create_task(agent.run(), name="test-agent")


async def stop_agent(agent: Agent, task: asyncio.Task[None]) -> None:
    """Stop ``agent`` and wait for it (its MQTT grace included)."""
    agent.request_stop()
    await asyncio.wait_for(task, 30)


def batches(subscriber: Subscriber) -> list[list[dict[str, Any]]]:
    """Every drain batch received, decoded."""
    out: list[list[dict[str, Any]]] = []
    for topic, payload, _ in subscriber.messages:
        if topic.endswith("/batch"):
            decoded = json.loads(payload)
            assert isinstance(decoded, list)
            out.append(decoded)
    return out


def sequences_in_arrival_order(subscriber: Subscriber) -> list[int]:
    """Sequences from both topics as they arrived, duplicates (by id) removed."""
    seen: set[str] = set()
    out: list[int] = []
    for topic, payload, _ in subscriber.messages:
        if topic.endswith("/batch"):
            events = json.loads(payload)
        elif "/events/" in topic:
            events = [json.loads(payload)]
        else:
            continue
        for event in events:
            if event["id"] not in seen:
                seen.add(event["id"])
                out.append(event["sequence"])
    return out


@pytest.mark.asyncio
async def test_an_outage_backlog_arrives_in_drain_batches_in_order_and_tail_shows_each_event(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}/v1"
    subscriber = Subscriber(mosquitto, f"{prefix}/nodes/node-c/#", persistent=True)
    subscriber.start()
    await asyncio.sleep(0.3)
    settings = in_process_settings(tmp_path, mosquitto.url("anon"), prefix, drain_batch=50)

    # The first run queues its events while the broker is away, then stops.
    await asyncio.to_thread(mosquitto.stop)
    probe = FlappingSensors(count=200)
    first = Agent(settings, probes=[probe])
    task = await run_agent(first)
    await until(lambda: probe.runs >= 4, 30, "4 flapping runs (800 events)")
    probe.paused = True
    await stop_agent(first, task)
    with Store.open(Path(settings.state_dir) / "nodemedic.db") as store:
        queued = store.outbox_stats().depth
        assert queued == store.last_sequence(), "nothing may have left the outbox"
    assert queued >= 800

    # The broker is back; `events tail` listens; the second run drains the backlog.
    await asyncio.to_thread(mosquitto.start)
    content_types = ContentTypes(mosquitto, f"{prefix}/nodes/node-c/#")
    watcher = asyncio.create_task(content_types.run(), name="test-content-types")
    await asyncio.wait_for(content_types.ready.wait(), 10)
    config = tail_config(tmp_path, mosquitto, prefix)
    # A retained batch of another node reaches the tail as it subscribes: its first line
    # says the tail listens, so the backlog cannot go out before it does.
    async with aiomqtt.Client(mosquitto.host, mosquitto.port("anon"), timeout=3) as client:
        await client.publish(
            f"{prefix}/nodes/node-s/batch", json.dumps([SENTINEL]), qos=1, retain=True
        )
    tail = await asyncio.create_subprocess_exec(
        str(NODEMEDIC),
        *("events", "tail", "--config", str(config), "--count", str(queued + 1)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert tail.stdout is not None
    heard = await asyncio.wait_for(tail.stdout.readline(), 60)
    assert b"node-s #0 io.nodemedic.test.sentinel" in heard, heard
    live_probe = FlappingSensors(count=200)
    live_probe.paused = True
    second = Agent(settings, probes=[live_probe])
    task = await run_agent(second)
    try:
        await until(
            lambda: len(set(sequences_in_arrival_order(subscriber))) > queued,
            60,
            f"the {queued} queued events",
        )
        live_probe.paused = False  # one run: 200 live condition events
        await until(lambda: live_probe.runs >= 1, 10, "a live run")
        live_probe.paused = True
        produced = second.events(type=None, since=None, limit=1)[0].sequence
        await until(
            lambda: len(set(sequences_in_arrival_order(subscriber))) >= produced,
            60,
            f"all {produced} events",
        )
    finally:
        await stop_agent(second, task)

    sequences = sequences_in_arrival_order(subscriber)
    assert sequences[:produced] == list(range(1, produced + 1)), "gap or disorder"
    drained = batches(subscriber)
    assert drained, "the backlog went out one event per message"
    assert max(len(batch) for batch in drained) == 50
    backlog = [event for batch in drained for event in batch]
    for event in backlog:
        check_cloudevent(event)
    # The backlog: everything queued while the broker was away (and what the second run
    # recorded before it connected, e.g. its agent.started).
    assert {event["sequence"] for event in backlog} >= set(range(1, queued + 1))
    # The second run's own events are live: one per message on their type's topic.
    live = [json.loads(p) for t, p, _ in subscriber.messages if "/events/" in t]
    assert len(live) >= 200
    assert all(event["sequence"] > queued for event in live)
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
        await watcher
    assert ("batch", "application/cloudevents-batch+json") in content_types.seen
    assert ("event", "application/cloudevents+json") in content_types.seen

    out, err = await asyncio.wait_for(tail.communicate(), 60)
    assert tail.returncode == 0, err
    lines = out.decode().splitlines()
    assert len(lines) == queued
    assert [int(line.split()[2].lstrip("#")) for line in lines] == list(range(1, queued + 1))
    await subscriber.stop()
