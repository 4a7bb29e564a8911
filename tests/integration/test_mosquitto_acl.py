"""The sample broker ACL in packaging/ does what its comments say, on a real Mosquitto.

Each node publishes only under its own tree and reads only its own and the fleet's
commands; operators deliver commands and read replies. What a client is refused is
seen the way a user would see it: a message that never arrives, a refused subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import pytest

from tests.brokers import (  # noqa: F401
    BrokerFactory,
    MosquittoBroker,
    mosquitto_factory_fixture,
    mqtt_pki_fixture,
)

ACL = Path(__file__).parents[2] / "packaging" / "mosquitto" / "nodemedic.acl"
USERS = {"web-1": "pw-web-1", "web-2": "pw-web-2", "operator": "pw-op", "monitor": "pw-mon"}
P = "nodemedic/v1"

pytestmark = [pytest.mark.mosquitto, pytest.mark.asyncio]


@pytest.fixture
def broker(mosquitto_factory: BrokerFactory) -> MosquittoBroker:
    """A broker whose password listener enforces the sample ACL."""
    return mosquitto_factory(persistence=False, acl_file=ACL, users=USERS)


@asynccontextmanager
async def _login(broker: MosquittoBroker, user: str) -> AsyncIterator[aiomqtt.Client]:
    client = aiomqtt.Client(
        broker.host,
        broker.port("password"),
        identifier=f"{user}-acl-test",
        username=user,
        password=USERS[user],
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=5,
    )
    async with client:
        yield client


async def _received(client: aiomqtt.Client, seconds: float = 1.0) -> list[str]:
    topics: list[str] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for message in client.messages:
                # One by one, not a comprehension: the timeout ends the loop, not the list.
                topics.append(str(message.topic))  # noqa: PERF401
    return topics


async def test_a_node_publishes_only_under_its_own_tree(broker: MosquittoBroker) -> None:
    async with _login(broker, "monitor") as monitor:
        await monitor.subscribe(f"{P}/nodes/#", qos=1)
        await monitor.subscribe(f"{P}/fleet/#", qos=1)
        async with _login(broker, "web-1") as node:
            await node.publish(f"{P}/nodes/web-1/events/io.nodemedic.x", b"{}", qos=0)
            await node.publish(f"{P}/nodes/web-1/batch", b"[]", qos=0)
            await node.publish(f"{P}/nodes/web-1/status", b"{}", qos=0)
        # Mosquitto may drop a client after a refused publish: one attempt per login.
        refused = (f"{P}/nodes/web-2/events/io.nodemedic.x", f"{P}/nodes/web-2/batch")
        for topic in (*refused, f"{P}/fleet/pause"):
            with contextlib.suppress(aiomqtt.MqttError):
                async with _login(broker, "web-1") as node:
                    await node.publish(topic, b"{}", qos=0)

        assert sorted(await _received(monitor)) == [
            f"{P}/nodes/web-1/batch",
            f"{P}/nodes/web-1/events/io.nodemedic.x",
            f"{P}/nodes/web-1/status",
        ]


async def test_a_node_reads_its_own_and_fleet_commands_only(broker: MosquittoBroker) -> None:
    async with _login(broker, "web-1") as node, _login(broker, "operator") as operator:
        # Mosquitto grants the subscriptions and filters each message by the read ACL.
        for topic in ("nodes/web-1/commands", "nodes/web-2/commands", "fleet/commands"):
            await node.subscribe(f"{P}/{topic}", qos=1)

        for topic in (f"{P}/nodes/web-1/commands", f"{P}/nodes/web-2/commands"):
            await operator.publish(topic, b"signed", qos=1)
        await operator.publish(f"{P}/fleet/commands", b"signed", qos=1)

        assert sorted(await _received(node)) == [
            f"{P}/fleet/commands",
            f"{P}/nodes/web-1/commands",
        ]


async def test_operators_read_replies_that_nodes_write(broker: MosquittoBroker) -> None:
    async with _login(broker, "operator") as operator, _login(broker, "web-2") as node:
        await operator.subscribe(f"{P}/replies/#", qos=1)
        await node.publish(f"{P}/replies/abc", b"{}", qos=1)
        assert await _received(operator) == [f"{P}/replies/abc"]
