"""The fleet bench's two phases over simulated nodes in worker processes.

:class:`Fleet` starts the workers (:mod:`bench.fleet.worker`) and talks to them;
:func:`fan_out` is phase 1 (a signed ``status`` command to every node on
``fleet/commands``, each reply timed from the publish to its arrival at the operator's
client); :func:`correlated_failure` is phase 2 (a share of the nodes fail at once and
work through their disruptive playbook under the etcd budget, watched by
:class:`~tests.etcd.SlotWatch` and by the ``remediation`` events the nodes
publish over MQTT). :func:`run_fleet` does both and returns the figures.
"""

from __future__ import annotations

__all__ = [
    "Fleet",
    "FleetResult",
    "correlated_failure",
    "fan_out",
    "percentile",
    "run_fleet",
    "status_command",
]

import asyncio
import contextlib
import json
import math
import os
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.commands import Command, generate_keypair, load_private_key, new_nonce, sign_command
from agent.topics import Topics
from bench.fleet.node import PREFIX, NodeSpec
from bench.fleet.services import FleetBroker, raise_fd_limit
from bench.fleet.worker import rss_kib
from tests.brokers import HOST
from tests.etcd import EtcdServer, SlotWatch

TOPIC_PREFIX = "nodemedic/v1"
FINAL = ("succeeded", "skipped", "failed", "interrupted")


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0-100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class _Worker:
    """One worker process and its JSON-lines pipe."""

    def __init__(self, proc: asyncio.subprocess.Process, nodes: list[str]) -> None:
        self.proc = proc
        self.nodes = nodes
        self.ready: dict[str, Any] = {}

    async def say(self, order: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(order).encode() + b"\n")
        await self.proc.stdin.drain()

    async def hear(self, within: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), within)
        if not line:
            raise RuntimeError(f"worker {self.proc.pid} exited ({self.proc.returncode})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"worker {self.proc.pid}: {answer['error']}")
        return answer

    async def ask(self, order: dict[str, Any], within: float = 60.0) -> dict[str, Any]:
        await self.say(order)
        return await self.hear(within)


@dataclass
class Fleet:
    """Simulated nodes ``sim-0000``... spread over worker processes.

    Args:
        spec: what every node shares.
        nodes: how many.
        workers: over how many processes.
        root: the nodes' directories live under it.
    """

    spec: NodeSpec
    nodes: int
    workers: int
    root: Path
    _workers: list[_Worker] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """Every node's name."""
        return [name for worker in self._workers for name in worker.nodes]

    async def start(self, within: float = 300.0) -> None:
        """Start the workers and wait until every node's MQTT link is up."""
        names = [f"sim-{index:04d}" for index in range(self.nodes)]
        share = math.ceil(self.nodes / self.workers)
        for first in range(0, self.nodes, share):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.fleet.worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 24,
            )
            worker = _Worker(proc, names[first : first + share])
            self._workers.append(worker)
            start = {"spec": self.spec.to_json(), "nodes": worker.nodes, "first": first}
            await worker.say({**start, "root": str(self.root)})
        for worker in self._workers:
            worker.ready = await worker.hear(within)

    async def fail(self, nodes: set[str]) -> None:
        """Make ``nodes`` breach from now on (all workers told at once)."""
        await asyncio.gather(
            *(w.ask({"op": "fail", "nodes": sorted(nodes & set(w.nodes))}) for w in self._workers)
        )

    def memory(self) -> dict[str, Any]:
        """RSS per worker now, the import floor, and the cost per simulated node."""
        rss = [rss_kib(w.proc.pid) for w in self._workers]
        floors = [int(w.ready.get("floor_kib", 0)) for w in self._workers]
        per_node = [
            (r - f) / len(w.nodes) for r, f, w in zip(rss, floors, self._workers, strict=True)
        ]
        return {
            "rss_kib": rss,
            "floor_kib": floors,
            "nodes_per_worker": [len(w.nodes) for w in self._workers],
            "kib_per_node": round(sum(per_node) / len(per_node), 1),
            "kib_per_node_with_floor": round(sum(rss) / self.nodes, 1),
        }

    async def stop(self) -> None:
        """Stop every worker (its agents shut down); kill by PID what does not exit."""
        for worker in self._workers:
            if worker.proc.returncode is None:
                with contextlib.suppress(OSError, RuntimeError):
                    await worker.say({"op": "stop"})
        for worker in self._workers:
            try:
                await asyncio.wait_for(worker.proc.wait(), 90)
            except TimeoutError:
                worker.proc.kill()
                await worker.proc.wait()

    def kill(self) -> None:
        """SIGKILL every worker still running (on errors and Ctrl-C)."""
        for worker in self._workers:
            if worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()


def _client(broker: FleetBroker) -> aiomqtt.Client:
    return aiomqtt.Client(
        HOST,
        broker.port,
        identifier=f"bench-operator-{secrets.token_hex(4)}",
        protocol=aiomqtt.ProtocolVersion.V5,
        max_queued_incoming_messages=0,
    )


def status_command(key_file: Path, *, lifetime: int = 60) -> bytes:
    """A ``status`` command for every simulated node, signed with the operator's key."""
    now = int(time.time())
    command = Command.model_validate(
        {
            "key_id": "operator",
            "issuer": "bench@fleet",
            "selector": {"labels": {"sim": "fleet"}},
            "kind": "status",
            "issued_at": now,
            "expires_at": now + lifetime,
            "nonce": new_nonce(),
        }
    )
    return sign_command(command, load_private_key(key_file))


async def fan_out(
    broker: FleetBroker, key_file: Path, *, expect: int, rounds: int, wait: float = 30.0
) -> list[dict[str, Any]]:
    """Phase 1: ``rounds`` signed fleet commands; per round the reply times in seconds."""
    reply_topic = f"{TOPIC_PREFIX}/replies/bench-{secrets.token_hex(6)}"
    fleet_topic = Topics(TOPIC_PREFIX, "-").fleet_commands
    results: list[dict[str, Any]] = []
    async with _client(broker) as client:
        await client.subscribe(reply_topic, qos=1)
        for _ in range(rounds):
            payload = status_command(key_file)
            correlation = secrets.token_bytes(16)
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.MessageExpiryInterval = 60
            props.ResponseTopic = reply_topic
            props.CorrelationData = correlation
            times: dict[str, float] = {}
            refused = 0
            start = time.perf_counter()
            await client.publish(fleet_topic, payload, qos=1, properties=props)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    async for message in client.messages:
                        if getattr(message.properties, "CorrelationData", None) != correlation:
                            continue
                        assert isinstance(message.payload, bytes)
                        reply = json.loads(message.payload)
                        if reply.get("ok"):
                            times.setdefault(reply["node"], time.perf_counter() - start)
                        else:
                            refused += 1
                        if len(times) + refused >= expect:
                            break
            results.append({"replies": times, "refused": refused})
            await asyncio.sleep(1.0)
    return results


async def correlated_failure(
    fleet: Fleet, broker: FleetBroker, etcd_url: str, failing: set[str], within: float
) -> dict[str, Any]:
    """Phase 2: ``failing`` nodes breach at once; the budget as etcd saw it, and the outcomes."""
    watch = SlotWatch(etcd_url, f"{PREFIX}/slots/")
    watcher = asyncio.create_task(watch.run(), name="slot-watch")
    outcomes: dict[str, str] = {}
    started: dict[str, float] = {}
    try:
        async with _client(broker) as client:
            for state in (*FINAL, "started"):
                event = f"io.nodemedic.remediation.{state}"
                await client.subscribe(Topics.event_filter(TOPIC_PREFIX, None, event), qos=1)
            await asyncio.wait_for(watch.ready.wait(), 30)
            begin = time.monotonic()
            await fleet.fail(failing)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        event = json.loads(message.payload)
                        node = str(event.get("source", "")).removeprefix("nodemedic://")
                        state = str(event.get("type", "")).rsplit(".", 1)[-1]
                        if state == "started":
                            started.setdefault(node, time.monotonic() - begin)
                        elif node in failing:
                            outcomes[node] = state
                            if len(outcomes) >= len(failing):
                                break
            elapsed = time.monotonic() - begin
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    counts = {state: sum(1 for s in outcomes.values() if s == state) for state in FINAL}
    return {
        "failing": len(failing),
        "budget": fleet.spec.budget,
        "drain_s": fleet.spec.drain_seconds,
        "max_concurrent": watch.most,
        "slot_grants": watch.grants,
        "total_s": round(elapsed, 2),
        "ideal_s": round(len(failing) * fleet.spec.drain_seconds / fleet.spec.budget, 2),
        "finished": len(outcomes),
        **counts,
        "timeline": [(round(t, 3), n) for t, n in watch.timeline],
    }


@dataclass
class FleetResult:
    """Everything one bench run measured."""

    nodes: int
    workers: int
    rounds: list[dict[str, Any]]
    memory: dict[str, Any]
    failure: dict[str, Any]
    startup_s: float

    def summary(self) -> dict[str, Any]:
        """The figures without the raw per-node times."""
        every = [t for r in self.rounds for t in r["replies"].values()]
        return {
            "nodes": self.nodes,
            "workers": self.workers,
            "startup_s": round(self.startup_s, 1),
            "fan_out": {
                "rounds": [_stats(list(r["replies"].values()), r["refused"]) for r in self.rounds],
                "all": _stats(every, sum(r["refused"] for r in self.rounds)),
            },
            "memory": self.memory,
            "correlated_failure": self.failure,
        }


def _stats(times: list[float], refused: int) -> dict[str, Any]:
    return {
        "replies": len(times),
        "refused": refused,
        "p50_ms": round(percentile(times, 50) * 1000, 1),
        "p99_ms": round(percentile(times, 99) * 1000, 1),
        "max_ms": round(max(times, default=math.nan) * 1000, 1),
    }


async def run_fleet(
    workdir: Path,
    *,
    nodes: int,
    workers: int,
    rounds: int,
    fail_share: float = 0.3,
    spec_overrides: dict[str, Any] | None = None,
) -> FleetResult:
    """Start the services and the fleet, run both phases, stop everything (also on errors)."""
    raise_fd_limit()
    broker = FleetBroker(workdir / "mosquitto")
    (workdir / "etcd").mkdir(parents=True)
    etcd = EtcdServer(workdir / "etcd")
    key_file, pub_file = generate_keypair(workdir / "keys", "operator")
    fleet: Fleet | None = None
    try:
        broker.start()
        etcd.start()
        spec = NodeSpec(
            broker=broker.url,
            etcd=etcd.url,
            operator_key=pub_file.read_text().strip(),
            **(spec_overrides or {}),
        )
        fleet = Fleet(spec, nodes, workers, workdir / "nodes")
        began = time.monotonic()
        await fleet.start()
        startup = time.monotonic() - began
        # A first command warms every path (and proves every node subscribed); not counted.
        for _ in range(5):
            warm = await fan_out(broker, key_file, expect=nodes, rounds=1)
            if len(warm[0]["replies"]) == nodes:
                break
        measured = await fan_out(broker, key_file, expect=nodes, rounds=rounds)
        memory = fleet.memory()
        names = fleet.names
        count = round(len(names) * fail_share)
        step = len(names) / count if count else 1
        failing = {names[int(i * step)] for i in range(count)}
        limit = 60 + 10 * count * spec.drain_seconds / spec.budget
        etcd_cpu = _cpu_seconds(etcd.pid)
        failure = await correlated_failure(fleet, broker, etcd.url, failing, limit)
        failure["etcd_cpu_s"] = round(_cpu_seconds(etcd.pid) - etcd_cpu, 2)
        await fleet.stop()
        return FleetResult(nodes, workers, measured, memory, failure, startup)
    finally:
        if fleet is not None:
            fleet.kill()
        etcd.stop()
        broker.stop()


def _cpu_seconds(pid: int | None) -> float:
    """User plus system CPU seconds ``pid`` has used (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
