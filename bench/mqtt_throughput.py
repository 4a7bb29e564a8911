"""MQTT publishing: the agent's outbox and publisher beside ``mosquitto_pub``, at QoS 1.

Everything runs on loopback against a Mosquitto started for the run (tests/brokers.py,
persistence on). The agent side is its real path: each event is appended to a SQLite
:class:`~agent.store.Store` with ``outbox=True`` and the :class:`~agent.mqtt.MqttPublisher`
is woken (what ``Agent._emit`` does), so the publisher reads the outbox and deletes each
row on its PUBACK. The reference is ``mosquitto_pub -q 1 -l`` sending as many lines, each
as long as the agent's CloudEvent payloads, in the same run. One ``mosquitto_sub`` in a
persistent QoS 1 session timestamps every delivery (``%U``) for both.

Measures, each for the agent and the reference, with the ratio agent/reference:

* sustained rate: N events emitted as fast as the path takes them; "acked" is until the
  last PUBACK (outbox empty / mosquitto_pub exited), "delivered" until the subscriber has
  them all;
* latency: events emitted at a fixed rate; emitted -> received by the subscriber;
* outbox drain after an outage: N events queued while the broker is stopped, then the
  broker starts; the rate from the publisher's reconnect to an empty outbox (for the
  reference: the same N lines through a fresh ``mosquitto_pub``), one event per message
  and again with drain batches (``mqtt.drain_batch``, ``--drain-batch`` events a message);
* the agent's CPU time (this process: store, outbox and publisher) per event in the
  sustained-rate and the drain measures.

Prints a table and writes bench/results/mqtt_throughput.json.

Usage: python -m bench.mqtt_throughput [--events 5000] [--latency-events 1000]
       [--latency-rate 200] [--pad 300] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from agent import __version__
from agent.config import MqttConfig
from agent.model import Condition, MqttLinkState
from agent.mqtt import MqttPublisher, Topics
from agent.store import OutboxLimits, Store
from tests.brokers import MOSQUITTO, MosquittoBroker, TestPKI

PREFIX = "nodemedic/bench"
EVENT_TYPE = "io.nodemedic.bench.tick"
WAIT = 120.0  # seconds: no single phase may take longer on this machine
MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"


def _no_conditions() -> list[Condition]:
    return []


async def _until(predicate: Callable[[], bool], within: float, what: str) -> float:
    """Poll ``predicate`` every millisecond; returns the epoch time it first held."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {within:.0f}s")
        await asyncio.sleep(0.001)
    return time.time()


# -- the subscriber ---------------------------------------------------------------------


class Subscriber:
    """``mosquitto_sub`` in a persistent QoS 1 session; each delivery timestamped (``%U``).

    :meth:`prime` creates the session and its subscription (so nothing published after
    it is missed), :meth:`start` resumes it and collects ``count`` messages.
    """

    def __init__(self, broker: MosquittoBroker, topic: str, workdir: Path, name: str) -> None:
        self._broker = broker
        self._topic = topic
        self._out = workdir / f"{name}.received"
        self._session = [
            *broker.cli_args("anon"),
            "-i",
            f"bench-{name}",
            "-c",
            "-x",
            "3600",
            "-q",
            "1",
            "-t",
            topic,
        ]
        self._proc: subprocess.Popen[bytes] | None = None
        self._count = 0

    def prime(self) -> None:
        """Create the session and subscription, then disconnect (after the SUBACK)."""
        subprocess.run(
            [MOSQUITTO_SUB, *self._session, "-E"], check=True, capture_output=True, timeout=30
        )

    def start(self, count: int) -> None:
        """Resume the session in the background until ``count`` messages arrived."""
        self._count = count
        with self._out.open("wb") as out:
            self._proc = subprocess.Popen(
                [
                    MOSQUITTO_SUB,
                    *self._session,
                    "-C",
                    str(count),
                    "-W",
                    str(int(WAIT)),
                    "-F",
                    "%U %p",
                ],
                stdout=out,
                stderr=subprocess.DEVNULL,
            )

    async def received(self, key: Callable[[str], str]) -> dict[str, float]:
        """Wait for the subscriber to finish; ``key(payload)`` -> first delivery time."""
        proc = self._proc
        assert proc is not None
        code = await asyncio.to_thread(proc.wait, WAIT + 10)
        times: dict[str, float] = {}
        for line in self._out.read_text(encoding="utf-8", errors="replace").splitlines():
            stamp, _, payload = line.partition(" ")
            times.setdefault(key(payload), float(stamp))
        if code != 0 or len(times) < self._count:
            raise RuntimeError(
                f"subscriber on {self._topic} got {len(times)} of {self._count} (exit {code})"
            )
        return times

    def kill(self) -> None:
        """Stop the subscriber if it still runs."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)


def _sequence_of(payload: str) -> str:
    return str(json.loads(payload)["sequence"])


def _first_sequence_of(payload: str) -> str:
    """An event's sequence, or a drain batch's first."""
    decoded = json.loads(payload)
    return str((decoded[0] if isinstance(decoded, list) else decoded)["sequence"])


def _line_key(payload: str) -> str:
    return payload[:8]


# -- the two paths ----------------------------------------------------------------------


class AgentPath:
    """The agent's store, outbox and publisher, connected to the broker's anonymous port."""

    def __init__(
        self, broker: MosquittoBroker, workdir: Path, *, node: str, pad: int, drain_batch: int = 0
    ) -> None:
        self.node = node
        self.topics = Topics(PREFIX, node)
        self.store = Store.open(
            workdir / node / "nodemedic.db",
            max_events=1_000_000,
            outbox_limits=OutboxLimits(max_events=1_000_000, max_bytes=1 << 30),
        )
        config = MqttConfig.model_validate(
            {
                "url": broker.url("anon"),
                "topic_prefix": PREFIX,
                # Short backoff: the drain figure is about the outbox, not the retry policy.
                "reconnect_min": "50ms",
                "reconnect_max": "200ms",
                "drain_batch": drain_batch,
            }
        )
        self.publisher = MqttPublisher(
            config,
            node=node,
            version=__version__,
            outbox=self.store,
            conditions=_no_conditions,
        )
        self._data_pad = "x" * pad
        self.emitted: dict[str, float] = {}

    def emit(self, index: int) -> None:
        """What ``Agent._emit`` does: record the event with ``outbox=True``.

        The store wakes the publisher after the event's group commit (``Store.on_commit``).
        """
        now = time.time()
        event = self.store.append_event(
            source=f"nodemedic://{self.node}",
            type=EVENT_TYPE,
            subject="bench",
            data={"i": index, "pad": self._data_pad},
            time=now,
            outbox=True,
        )
        self.emitted[str(event.sequence)] = now

    def depth(self) -> int:
        """Events in the outbox still waiting for their PUBACK."""
        return self.store.outbox_stats().depth

    def connected(self) -> bool:
        """Whether the publisher has a session with the broker."""
        return self.publisher.status().state is MqttLinkState.CONNECTED

    def payload_size(self) -> float:
        """Mean CloudEvent payload bytes of the events queued now."""
        rows = self.store.outbox_batch(limit=1000)
        return statistics.fmean(len(row.payload) for row in rows)

    async def close(self) -> None:
        """Stop the publisher and close the store."""
        await self.publisher.aclose(grace=2.0)
        self.store.close()


class ReferencePublisher:
    """``mosquitto_pub -q 1 -l``: one message per stdin line, fed by this process."""

    def __init__(self, broker: MosquittoBroker, topic: str, size: int) -> None:
        self._size = size
        self.emitted: dict[str, float] = {}
        self.proc = subprocess.Popen(
            [MOSQUITTO_PUB, *broker.cli_args("anon"), "-q", "1", "-t", topic, "-l"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            bufsize=0,
        )

    def line(self, index: int) -> bytes:
        """Message ``index``: its 8-digit number padded to the agent's payload size."""
        return f"{index:08d}".ljust(self._size, "x").encode() + b"\n"

    def send(self, index: int) -> None:
        """Write one line now (the pipe holds far more than one line)."""
        stdin = self._stdin()
        stdin.write(self.line(index))
        self.emitted[f"{index:08d}"] = time.time()

    def send_all(self, count: int) -> None:
        """Write ``count`` lines and close stdin (blocking: run it off the loop)."""
        stdin = self._stdin()
        stdin.write(b"".join(self.line(i) for i in range(count)))
        stdin.close()

    async def finish(self) -> float:
        """Close stdin, wait until every PUBACK came and it exited; returns that time."""
        stdin = self._stdin()
        if not stdin.closed:
            stdin.close()
        code = await asyncio.to_thread(self.proc.wait, WAIT)
        if code != 0:
            assert self.proc.stderr is not None
            raise RuntimeError(f"mosquitto_pub exited {code}: {self.proc.stderr.read()!r}")
        return time.time()

    def _stdin(self) -> IO[bytes]:
        assert self.proc.stdin is not None
        return self.proc.stdin


# -- the measures -----------------------------------------------------------------------


@dataclass
class Run:
    """One repetition's figures, by measure name."""

    agent: dict[str, float] = field(default_factory=dict)
    reference: dict[str, float] = field(default_factory=dict)


def _latencies(emitted: dict[str, float], received: dict[str, float]) -> tuple[float, float]:
    """(p50, p99) of received - emitted, in milliseconds."""
    delays = sorted(1000 * (received[key] - sent) for key, sent in emitted.items())
    return statistics.median(delays), statistics.quantiles(delays, n=100)[98]


class Bench:
    """Runs every measure on one broker; each repetition gets fresh sessions and stores."""

    def __init__(self, broker: MosquittoBroker, workdir: Path, args: argparse.Namespace) -> None:
        self.broker = broker
        self.workdir = workdir
        self.args = args
        self.payload_size = 0.0
        self._names = 0

    def _name(self, what: str) -> str:
        self._names += 1
        return f"{what}-{self._names}"

    def _agent(self, what: str, drain_batch: int = 0) -> AgentPath:
        return AgentPath(
            self.broker,
            self.workdir,
            node=self._name(what),
            pad=self.args.pad,
            drain_batch=drain_batch,
        )

    def _subscriber(self, topic: str, what: str) -> Subscriber:
        return Subscriber(self.broker, topic, self.workdir, self._name(what))

    async def calibrate(self) -> None:
        """Measure the agent's payload size, which the reference's lines then match."""
        agent = self._agent("calibrate")
        try:
            for i in range(100):
                agent.emit(i)
            self.payload_size = agent.payload_size()
        finally:
            await agent.close()

    async def agent_rate(self, run: Run) -> None:
        """Emit N events as fast as the loop takes them; time to acked and to delivered."""
        n = self.args.events
        agent = self._agent("agent-rate")
        sub = self._subscriber(agent.topics.event(EVENT_TYPE), "sub")
        try:
            sub.prime()
            agent.publisher.start()
            await _until(agent.connected, WAIT, "agent connects")
            sub.start(n)
            started = time.time()
            cpu = time.process_time()
            for i in range(n):
                agent.emit(i)
                await asyncio.sleep(0)  # let the publisher run, as the agent's loop would
            emitted = time.time()
            acked = await _until(lambda: agent.depth() == 0, WAIT, "outbox empties")
            cpu = time.process_time() - cpu
            received = await sub.received(_sequence_of)
        finally:
            sub.kill()
            await agent.close()
        run.agent["cpu_per_event_us"] = 1e6 * cpu / n
        run.agent["rate_emitted"] = n / (emitted - started)
        run.agent["rate_acked"] = n / (acked - started)
        run.agent["rate_delivered"] = n / (max(received.values()) - started)

    async def reference_rate(self, run: Run) -> None:
        """The same N lines through ``mosquitto_pub -l`` as fast as it reads them."""
        n = self.args.events
        topic = f"{PREFIX}/reference/{self._name('rate')}"
        sub = self._subscriber(topic, "sub")
        try:
            sub.prime()
            sub.start(n)
            pub = ReferencePublisher(self.broker, topic, round(self.payload_size))
            started = time.time()
            await asyncio.to_thread(pub.send_all, n)
            acked = await pub.finish()
            received = await sub.received(_line_key)
        finally:
            sub.kill()
        run.reference["rate_acked"] = n / (acked - started)
        run.reference["rate_delivered"] = n / (max(received.values()) - started)

    async def _paced(self, send: Callable[[int], None]) -> None:
        n, rate = self.args.latency_events, self.args.latency_rate
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            send(i)

    async def agent_latency(self, run: Run) -> None:
        """Events at a fixed rate; emitted -> received, p50 and p99."""
        agent = self._agent("agent-latency")
        sub = self._subscriber(agent.topics.event(EVENT_TYPE), "sub")
        try:
            sub.prime()
            agent.publisher.start()
            await _until(agent.connected, WAIT, "agent connects")
            sub.start(self.args.latency_events)
            await self._paced(agent.emit)
            received = await sub.received(_sequence_of)
            emitted = agent.emitted
        finally:
            sub.kill()
            await agent.close()
        run.agent["latency_p50_ms"], run.agent["latency_p99_ms"] = _latencies(emitted, received)

    async def reference_latency(self, run: Run) -> None:
        """The same rate through ``mosquitto_pub -l``, a line written when it is due."""
        topic = f"{PREFIX}/reference/{self._name('latency')}"
        sub = self._subscriber(topic, "sub")
        try:
            sub.prime()
            sub.start(self.args.latency_events)
            pub = ReferencePublisher(self.broker, topic, round(self.payload_size))
            await asyncio.sleep(0.2)  # its connect is not part of the first line's latency
            await self._paced(pub.send)
            await pub.finish()
            received = await sub.received(_line_key)
        finally:
            sub.kill()
        emitted = pub.emitted
        run.reference["latency_p50_ms"], run.reference["latency_p99_ms"] = _latencies(
            emitted, received
        )

    async def agent_drain(self, run: Run, drain_batch: int = 0) -> None:
        """Queue N events while the broker is down, start it, time the outbox draining."""
        n = self.args.events
        agent = self._agent("agent-drain", drain_batch)
        key = "_batched" if drain_batch > 1 else ""
        topic = agent.topics.batch if key else agent.topics.event(EVENT_TYPE)
        messages = -(-n // drain_batch) if key else n
        sub = self._subscriber(topic, "sub")
        try:
            sub.prime()
            agent.publisher.start()
            await _until(agent.connected, WAIT, "agent connects")
            await asyncio.to_thread(self.broker.stop)
            await _until(lambda: not agent.connected(), WAIT, "agent notices the outage")
            for i in range(n):
                agent.emit(i)
            assert agent.depth() == n
            await asyncio.to_thread(self.broker.start)
            up = time.time()
            sub.start(messages)
            cpu = time.process_time()
            connected = await _until(agent.connected, WAIT, "agent reconnects")
            drained = await _until(lambda: agent.depth() == 0, WAIT, "outbox empties")
            cpu = time.process_time() - cpu
            received = await sub.received(_first_sequence_of)
        finally:
            sub.kill()
            await agent.close()
            if not self.broker.running:
                self.broker.start()
        run.agent[f"drain{key}_rate"] = n / (drained - connected)
        run.agent[f"drain{key}_delivered_rate"] = n / (max(received.values()) - connected)
        run.agent[f"drain{key}_cpu_per_event_us"] = 1e6 * cpu / n
        if not key:
            run.agent["reconnect_ms"] = 1000 * (connected - up)

    async def reference_drain(self, run: Run) -> None:
        """N queued lines through a fresh ``mosquitto_pub``: start to last PUBACK."""
        n = self.args.events
        topic = f"{PREFIX}/reference/{self._name('drain')}"
        sub = self._subscriber(topic, "sub")
        try:
            sub.prime()
            sub.start(n)
            # All lines are waiting in a file before it starts, as rows wait in the outbox.
            lines = self.workdir / "drain.lines"
            size = round(self.payload_size)
            lines.write_bytes(
                b"".join(f"{i:08d}".ljust(size, "x").encode() + b"\n" for i in range(n))
            )
            started = time.time()
            with lines.open("rb") as stdin:
                proc = await asyncio.to_thread(
                    subprocess.run,
                    [MOSQUITTO_PUB, *self.broker.cli_args("anon"), "-q", "1", "-t", topic, "-l"],
                    stdin=stdin,
                    capture_output=True,
                    timeout=WAIT,
                    check=True,
                )
            del proc
            acked = time.time()
            received = await sub.received(_line_key)
        finally:
            sub.kill()
        run.reference["drain_rate"] = n / (acked - started)
        run.reference["drain_delivered_rate"] = n / (max(received.values()) - started)

    async def run_once(self) -> Run:
        """Every measure once, agent and reference alternating."""
        run = Run()
        await self.agent_rate(run)
        await self.reference_rate(run)
        await self.agent_latency(run)
        await self.reference_latency(run)
        await self.agent_drain(run)
        await self.agent_drain(run, self.args.drain_batch)
        await self.reference_drain(run)
        return run


# -- report -----------------------------------------------------------------------------

ROWS = (
    ("rate_emitted", "emitted (store append + outbox)", "ev/s"),
    ("cpu_per_event_us", "agent CPU per event, sustained", "us"),
    ("rate_acked", "sustained rate to last PUBACK", "ev/s"),
    ("rate_delivered", "sustained rate, delivered", "ev/s"),
    ("latency_p50_ms", "latency p50 (emitted->received)", "ms"),
    ("latency_p99_ms", "latency p99 (emitted->received)", "ms"),
    ("drain_rate", "outbox drain after outage", "ev/s"),
    ("drain_delivered_rate", "outbox drain, delivered", "ev/s"),
    ("drain_cpu_per_event_us", "agent CPU per event, drain", "us"),
    ("drain_batched_rate", "drain in batches (drain_batch)", "ev/s"),
    ("drain_batched_delivered_rate", "drain in batches, delivered", "ev/s"),
    ("drain_batched_cpu_per_event_us", "agent CPU per event, batches", "us"),
    ("reconnect_ms", "reconnect after broker start", "ms"),
)


def _median(runs: list[dict[str, float]], key: str) -> float | None:
    values = [run[key] for run in runs if key in run]
    return statistics.median(values) if values else None


def report(runs: list[Run], args: argparse.Namespace, payload_size: float, version: str) -> None:
    """Print the table and write the JSON."""
    medians: dict[str, dict[str, float | None]] = {}
    print(
        f"\nMQTT QoS 1 to a local {version}, payload {payload_size:.0f} B, "
        f"N={args.events} (latency: {args.latency_events} at {args.latency_rate:g}/s), "
        f"median of {len(runs)}:"
    )
    print(f"  {'measure':34s} {'unit':>5s} {'agent':>10s} {'mosquitto_pub':>14s} {'ratio':>7s}")
    for key, label, unit in ROWS:
        agent = _median([run.agent for run in runs], key)
        ref = _median([run.reference for run in runs], key)
        ratio = agent / ref if agent is not None and ref else None
        medians[key] = {"agent": agent, "mosquitto_pub": ref, "ratio_agent_over_ref": ratio}
        print(
            f"  {label:34s} {unit:>5s} {_fmt(agent):>10s} {_fmt(ref):>14s} "
            f"{'' if ratio is None else f'{ratio:.2f}':>7s}"
        )
    print("  (ratio = agent / mosquitto_pub: for rates higher is better, for latency lower)")
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "broker": version,
        "payload_bytes": payload_size,
        "events": args.events,
        "latency_events": args.latency_events,
        "latency_rate": args.latency_rate,
        "drain_batch": args.drain_batch,
        "repeat": len(runs),
        "median": medians,
        "runs": [{"agent": run.agent, "mosquitto_pub": run.reference} for run in runs],
    }
    (out / "mqtt_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"  written to {out / 'mqtt_throughput.json'}")


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.2f}"


@contextmanager
def _broker(workdir: Path) -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(workdir / "mosquitto", TestPKI.create(workdir / "pki"))
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


async def _main(args: argparse.Namespace, version: str) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="nodemedic-mqtt-bench-") as tmp,
        _broker(Path(tmp)) as broker,
    ):
        bench = Bench(broker, Path(tmp), args)
        await bench.calibrate()
        runs = []
        for i in range(args.repeat):
            print(f"run {i + 1}/{args.repeat}...", flush=True)
            runs.append(await bench.run_once())
        report(runs, args, bench.payload_size, version)


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="events per rate/drain run")
    parser.add_argument("--latency-events", type=int, default=1000)
    parser.add_argument("--latency-rate", type=float, default=200.0, help="events/s")
    parser.add_argument("--pad", type=int, default=300, help="bytes of padding in event data")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--drain-batch", type=int, default=100, help="events a message in the batched drain"
    )
    args = parser.parse_args()
    if not 1 <= args.events <= 100_000 or not 1 <= args.latency_events <= 20_000:
        parser.error("keep --events within 1..100000 and --latency-events within 1..20000")
    if not 2 <= args.drain_batch <= 1000:
        parser.error("keep --drain-batch within 2..1000 (mqtt.drain_batch's range)")
    logging.basicConfig(level=logging.WARNING)
    version = subprocess.run(
        [MOSQUITTO, "-h"], capture_output=True, text=True, check=False, timeout=10
    ).stdout.splitlines()[0]
    asyncio.run(_main(args, version))


if __name__ == "__main__":
    main()
