"""CPU one real agent spends per signed fleet command, without the fleet.

Starts one Mosquitto (:class:`bench.fleet.services.FleetBroker`) and ONE simulated node
(the real :class:`~agent.runtime.Agent` of :mod:`bench.fleet.node`, fleet budget off, so
no etcd) in a child process, then sends ``--commands`` signed ``status`` commands on
``fleet/commands``, one at a time, each with a response topic, as the fleet bench does.
A command counts as done when both its reply and its ``io.nodemedic.command.accepted``
event have reached the operator; the child's CPU (every thread, user and system, from
``/proc/PID/task/*/schedstat`` in nanoseconds) is read before the publish and after
both arrive. The median over the commands is the figure: the other helpers' load on a
shared machine does not count (only what the agent process ran), and the median drops
the commands that happened to share their window with the node's 1 s probe tick.

``--profile FILE`` runs the child under cProfile and writes its stats there (the CPU
figures then include the profiler's overhead). Prints a line and writes
``bench/results/command_cost.json``.

Usage: python -m bench.command_cost [--commands 300] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.commands import generate_keypair
from agent.topics import Topics
from bench.common import RESULTS, cpu_seconds
from bench.fleet.node import NodeSpec, SyntheticLoad, node_settings
from bench.fleet.run import status_command
from bench.fleet.services import FleetBroker, raise_fd_limit
from tests.brokers import HOST

PREFIX = "nodemedic/v1"


def _names(nodes: int) -> list[str]:
    return [f"sim-{index:04d}" for index in range(nodes)]


# --- the nodes (child process) ------------------------------------------------------


async def _serve_nodes(start: dict[str, Any]) -> None:
    from agent.runtime import Agent
    from bench.fleet.worker import _Silent

    spec = NodeSpec(**start["spec"])
    agents = []
    for index, name in enumerate(_names(start["nodes"])):
        settings = node_settings(spec, name, index, Path(start["root"]))
        remediation = settings.remediation
        budget = remediation.fleet_budget.model_copy(update={"enabled": False})
        settings = settings.model_copy(
            update={"remediation": remediation.model_copy(update={"fleet_budget": budget})}
        )
        probes = [SyntheticLoad(name, spec.interval)]
        agents.append(Agent(settings, probes=probes, notifier=_Silent()))
    runs = [asyncio.create_task(agent.run(), name=f"node-{i}") for i, agent in enumerate(agents)]
    while not all(
        (status := agent.mqtt_status()) is not None and status.state.value == "connected"
        for agent in agents
    ):
        for run in runs:
            if run.done():
                run.result()
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # the bench closes stdin to stop
    for agent in agents:
        agent.request_stop()
    await asyncio.wait_for(asyncio.gather(*runs), 60)


def _node_main(start: dict[str, Any], profile: str | None) -> None:
    if profile is None:
        asyncio.run(_serve_nodes(start))
        return
    import cProfile

    profiler = cProfile.Profile(time.process_time)  # CPU, not the waits
    profiler.enable()
    try:
        asyncio.run(_serve_nodes(start))
    finally:
        profiler.disable()
        profiler.dump_stats(profile)


# --- the operator (bench process) ---------------------------------------------------


async def _send_all(
    broker: FleetBroker, key_file: Path, pid: int, *, nodes: int, count: int, wait: float
) -> list[float]:
    """CPU seconds the nodes used per command and node, in order; commands signed beforehand."""
    reply_topic = f"{PREFIX}/replies/bench-{secrets.token_hex(6)}"
    fleet_topic = Topics(PREFIX, "-").fleet_commands
    accepted = Topics.event_filter(PREFIX, None, "io.nodemedic.command.accepted")
    payloads = [status_command(key_file, lifetime=600) for _ in range(count)]
    costs: list[float] = []
    async with aiomqtt.Client(
        HOST,
        broker.port,
        identifier="bench-operator",
        protocol=aiomqtt.ProtocolVersion.V5,
        max_queued_incoming_messages=0,
    ) as client:
        await client.subscribe(reply_topic, qos=1)
        await client.subscribe(accepted, qos=1)
        messages = aiter(client.messages)
        for payload in payloads:
            nonce = json.loads(payload)["command"]["nonce"]
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = reply_topic
            props.CorrelationData = secrets.token_bytes(16)
            before = cpu_seconds(pid)
            await client.publish(fleet_topic, payload, qos=1, properties=props)
            replies = events = 0
            async with asyncio.timeout(wait):
                while replies < nodes or events < nodes:
                    message = await anext(messages)
                    assert isinstance(message.payload, bytes)
                    body = json.loads(message.payload)
                    if message.topic.matches(reply_topic) and body.get("nonce") == nonce:
                        if not body.get("ok"):
                            raise RuntimeError(f"command refused: {body}")
                        replies += 1
                    elif body.get("data", {}).get("nonce") == nonce:
                        events += 1
            costs.append((cpu_seconds(pid) - before) / nodes)
    return costs


async def measure(
    *, nodes: int, commands: int, profile: Path | None, wait: float = 60.0
) -> dict[str, Any]:
    """Start the broker and the nodes, send ``commands`` commands, stop both; the figures."""
    with tempfile.TemporaryDirectory(prefix="nodemedic-cmdcost-") as tmp:
        root = Path(tmp)
        broker = FleetBroker(root / "mosquitto")
        key_file, pub_file = generate_keypair(root / "keys", "operator")
        raise_fd_limit()
        broker.start()
        proc: asyncio.subprocess.Process | None = None
        try:
            spec = NodeSpec(
                broker=broker.url, etcd="http://127.0.0.1:9", operator_key=pub_file.read_text()
            )
            start = {"spec": spec.to_json(), "root": str(root / "nodes"), "nodes": nodes}
            argv = ["--node", json.dumps(start)]
            if profile is not None:
                argv += ["--profile", str(profile)]
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.command_cost",
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert proc.stdout is not None
            assert proc.stdin is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 120 + nodes)
            if line.strip() != b"ready":
                raise RuntimeError(f"the nodes did not start: {line!r}")
            # Warm every path first (not counted).
            await _send_all(broker, key_file, proc.pid, nodes=nodes, count=5, wait=wait)
            idle_before = cpu_seconds(proc.pid)
            await asyncio.sleep(2.0)
            idle = (cpu_seconds(proc.pid) - idle_before) / 2.0
            began = time.monotonic()
            costs = await _send_all(
                broker, key_file, proc.pid, nodes=nodes, count=commands, wait=wait
            )
            elapsed = time.monotonic() - began
            proc.stdin.close()
            await asyncio.wait_for(proc.wait(), 60 + nodes)
        finally:
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
            broker.stop()
    ordered = sorted(costs)
    return {
        "nodes": nodes,
        "commands": commands,
        "median_ms": round(statistics.median(costs) * 1000, 3),
        "p10_ms": round(ordered[len(ordered) // 10] * 1000, 3),
        "p90_ms": round(ordered[len(ordered) * 9 // 10] * 1000, 3),
        "mean_ms": round(statistics.fmean(costs) * 1000, 3),
        "idle_ms_per_s": round(idle * 1000, 2),
        "round_trip_ms": round(elapsed / commands * 1000, 2),
        "profiled": profile is not None,
    }


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=300)
    parser.add_argument("--nodes", type=int, default=1, help="agents in the one node process")
    parser.add_argument("--profile", type=Path, help="cProfile the node; stats to this file")
    parser.add_argument("--node", help=argparse.SUPPRESS)  # the child's start message
    parser.add_argument("--out", type=Path, default=RESULTS / "command_cost.json")
    args = parser.parse_args()
    if args.node is not None:
        _node_main(json.loads(args.node), str(args.profile) if args.profile else None)
        return
    result = asyncio.run(measure(nodes=args.nodes, commands=args.commands, profile=args.profile))
    print(
        f"command cost: {result['median_ms']} ms CPU per command and node, median of "
        f"{result['commands']} commands to {result['nodes']} nodes "
        f"(p10 {result['p10_ms']}, p90 {result['p90_ms']}, "
        f"mean {result['mean_ms']}); idle {result['idle_ms_per_s']} ms/s; "
        f"round trip {result['round_trip_ms']} ms"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
