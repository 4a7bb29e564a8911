"""A flood of malformed and oversized commands at a real agent through a real Mosquitto.

11,000 payloads of tests/command_corpus.py (the first 1,000 warm the agent up) go to the
node's command topic at QoS 1, in chunks of 200 each followed by a signed status command
whose reply says the chunk was read. Every payload that reaches the agent is refused
with a reason (its log says so); the broker drops those over the size the agent
announces (MQTT 5 Maximum Packet Size). Then 3,000 more go as one burst, faster than
the agent reads, which its bounded incoming queue absorbs by dropping. Throughout, the
agent keeps answering /healthz, its memory (VmRSS, measured after the warm-up) grows by
less than 30 MB, and a valid command afterwards still runs. The corpus is mutated from
commands the key may sign but its policy refuses, so a mutation that happens to stay
valid still runs nothing. Figures are printed, never asserted.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import aiomqtt
import pytest

from agent.commands import MAX_COMMAND_BYTES
from tests.brokers import (  # noqa: F401
    BrokerFactory,
    MosquittoBroker,
    mosquitto_factory_fixture,
    mqtt_pki_fixture,
)
from tests.command_corpus import HUGE, malformed_commands
from tests.conftest import http_get, http_json, until
from tests.remote_fleet import (  # noqa: F401
    AgentFactory,
    Operator,
    RemoteAgent,
    playbook,
    remote_agents_fixture,
    rss_kib,
    send,
)

pytestmark = [pytest.mark.mosquitto]

WARM_UP = 1_000
CORPUS = 10_000
CHUNK = 200
BURST = 3_000
MAX_GROWTH_KIB = 30 * 1024
FLOOD_SECONDS = 240.0
"""The flood's bound in time; far more than it takes (about 20 s on two busy cores)."""


class HealthWatch:
    """Polls /healthz every quarter second in a thread; records every answer."""

    def __init__(self, agent: RemoteAgent) -> None:
        self._agent = agent
        self._stop = threading.Event()
        self.answers: list[tuple[int, float]] = []
        self._thread = threading.Thread(target=self._poll, name="healthz", daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _poll(self) -> None:
        while not self._stop.wait(0.25):
            started = time.perf_counter()
            try:
                status, _ = http_get(self._agent.url + "/healthz", timeout=10.0)
            except OSError:
                status = 0
            self.answers.append((status, time.perf_counter() - started))


async def _flood(broker: MosquittoBroker, topic: str, payloads: Iterable[bytes]) -> int:
    sent = 0
    deadline = time.monotonic() + FLOOD_SECONDS
    async with aiomqtt.Client(
        broker.host,
        broker.port("anon"),
        identifier="fuzzer",
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=30,
        max_inflight_messages=50,
    ) as client:
        client.pending_calls_threshold = 100
        window = asyncio.Semaphore(40)
        pending: set[asyncio.Task[None]] = set()

        async def publish(payload: bytes) -> None:
            try:
                await client.publish(topic, payload, qos=1, timeout=60)
            finally:
                window.release()

        for payload in payloads:
            assert time.monotonic() < deadline, f"the flood took over {FLOOD_SECONDS}s"
            await window.acquire()
            task = asyncio.create_task(publish(payload), name=f"fuzz-{sent}")
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
        await asyncio.gather(*pending)
    return sent


def _refusals(agent: RemoteAgent) -> int:
    return agent.log().count("refused: command rejected")


def test_a_flood_of_malformed_commands_leaves_the_agent_bounded_and_working(
    tmp_path: Path, mosquitto_factory: BrokerFactory, remote_agents: AgentFactory
) -> None:
    broker = mosquitto_factory(persistence=False)
    ops = Operator.create(tmp_path / "keys", "ops", playbooks=["dry-*"], params=["note"])
    agent = remote_agents(
        "web-1",
        broker=broker,
        operators=[ops],
        playbooks=[playbook("dry-check", mode="dry_run", log=tmp_path / "never.log")],
    ).start_ready()
    until(agent.subscribed, "the MQTT session", agent)
    topic = "nodemedic/v1/nodes/web-1/commands"
    # Signed by a trusted key, refused by its policy or selector: mutants cannot run.
    valid = [
        ops.sign(playbook="forbidden", target="demo.service", params={"note": "x"}),
        ops.sign(kind="approve", run_id="01ABCDEFGH"),
        ops.sign(kind="pause"),
        ops.sign(kind="status", selector={"nodes": ["db-1"]}),
    ]
    corpus = malformed_commands(valid, WARM_UP + CORPUS + BURST, seed=20261129)

    def barrier(what: str, attempts: int = 1) -> None:
        # Replies come in order on one topic: once this one is back, what came before was
        # read. After a burst the full queue may drop it too: then ask again.
        wait = FLOOD_SECONDS if attempts == 1 else 5.0
        for _ in range(attempts):
            replies = send(broker, ops.sign(kind="status"), node="web-1", wait=wait)
            if replies:
                assert replies[0]["ok"], f"{what}: {replies}"
                return
        pytest.fail(f"no reply {what}:\n{agent.log()[-3000:]}")

    def paced(count: int) -> tuple[int, int]:
        sent = small = 0
        while sent < count:
            chunk = [next(corpus) for _ in range(min(CHUNK, count - sent))]
            sent += asyncio.run(_flood(broker, topic, chunk))
            small += sum(1 for payload in chunk if len(payload) <= MAX_COMMAND_BYTES)
            barrier(f"after {sent} payloads")
        return sent, small

    with HealthWatch(agent) as health:
        paced(WARM_UP)
        before = rss_kib(agent)
        refused_before = _refusals(agent)
        started = time.monotonic()
        sent, small = paced(CORPUS)
        took = time.monotonic() - started
        refused = _refusals(agent) - refused_before
        after_corpus = rss_kib(agent)
        burst_started = time.monotonic()
        burst = asyncio.run(_flood(broker, topic, corpus))
        barrier("after the burst", attempts=24)
        burst_took = time.monotonic() - burst_started
        after = rss_kib(agent)

    assert (sent, burst) == (CORPUS, BURST)
    # Everything a command may be reached the agent and was refused with a reason; what
    # the broker dropped was over the size the agent announced.
    assert small <= refused <= sent, (small, refused, sent)
    assert "Traceback" not in agent.log()
    assert health.answers
    assert all(status == 200 for status, _ in health.answers), health.answers
    growth = after - before
    assert growth < MAX_GROWTH_KIB, f"VmRSS grew {growth} KiB ({before} -> {after})"
    print(  # noqa: T201 - figures for the report, never asserted
        f"\nfuzz: {sent} payloads (largest {HUGE} B) in chunks of {CHUNK} in {took:.1f}s"
        f" ({sent / took:.0f}/s), {refused} refused by the agent ({sent - refused} dropped"
        f" by the broker for size); burst of {burst} in {burst_took:.1f}s;"
        f" VmRSS {before} -> {after_corpus} -> {after} KiB ({growth:+d});"
        f" /healthz {len(health.answers)} answers, slowest"
        f" {max(t for _, t in health.answers) * 1000:.0f} ms"
    )

    # Still working: a valid command runs.
    [reply] = send(
        broker, ops.sign(playbook="dry-check", params={"note": "after"}), node="web-1", wait=60
    )
    assert reply["ok"], reply
    run_url = f"{agent.url}/v1/runs/{reply['run_id']}"
    until(lambda: http_json(run_url)["state"] == "succeeded", "the run after the flood", agent)
    agent.stop()
