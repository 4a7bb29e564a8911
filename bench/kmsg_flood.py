"""What the kernel log probe costs: CPU per 10,000 lines, and a flood held to its cap.

1. match: parse and match 10,000 records against the default patterns in this process
   (the real kernel lines of tests/fixtures/kmsg mixed with ordinary driver chatter).
2. probe: the whole probe reading a FIFO that a child process fills (so the writer's
   CPU is not ours), uncapped; the CPU is this process's, per 10,000 lines read.
3. flood: the same with the default cap of 1,000 lines/s and a writer pushing as fast
   as it can; prints the lines matched, the lines skipped and counted, and the probe's
   CPU per second of flood, which stays flat however hard the writer pushes.

Usage: python -m bench.kmsg_flood [--lines 200000] [--flood-seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from agent.config import KmsgProbeConfig
from agent.probes.base import ProbeUpdate
from agent.probes.kmsg import KmsgProbe
from agent.probes.kmsg_match import KernelLogMatcher, KernelPattern
from agent.probes.kmsg_record import RecordSplitter, parse_record

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "kmsg"
CHATTER = (
    "6,{n},{n},-;eth0: renamed from veth9c1f2a1",
    "6,{n},{n},-;IPv6: ADDRCONF(NETDEV_CHANGE): cali1234abcd: link becomes ready",
    '5,{n},{n},-;audit: type=1400 audit(1700000000.123:{n}): apparmor="DENIED" '
    'operation="open" profile="snap.x" name="/proc/{n}/stat" pid={n} comm="x"',
    "6,{n},{n},-;docker0: port 3(veth{n}) entered forwarding state",
    "4,{n},{n},-;nf_conntrack: nf_conntrack: table full, dropping packet",
)


def _patterns() -> list[KernelPattern]:
    return [KernelPattern.from_config(p) for p in KmsgProbeConfig().effective_patterns]


def _corpus(count: int) -> bytes:
    """``count`` records: one real trouble line in ten, the rest chatter, seq 1..count."""
    trouble = [
        line.split(";", 1)[1]
        for path in sorted(FIXTURES.glob("*.txt"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line and line[0].isdigit()
    ]
    out = []
    for n in range(1, count + 1):
        if n % 10 == 0:
            out.append(f"3,{n},{n},-;{trouble[n // 10 % len(trouble)]}")
        else:
            out.append(CHATTER[n % len(CHATTER)].format(n=n))
    return ("\n".join(out) + "\n").encode()


def bench_match(corpus: bytes) -> float:
    """CPU seconds per 10,000 records to split, parse and match in-process."""
    splitter = RecordSplitter()
    matcher = KernelLogMatcher(_patterns(), clock=time.monotonic)
    started = time.process_time()
    texts = splitter.feed(corpus) + splitter.flush()
    for text in texts:
        record = parse_record(text)
        if record.facility == 1:  # keep the benchmark on the kernel path
            continue
        matcher.feed(record)
    return (time.process_time() - started) / len(texts) * 10_000


async def _drain(probe: KmsgProbe, fifo: Path, corpus_file: Path, lines: int) -> ProbeUpdate:
    updates = probe.watch()
    update = await anext(updates)
    sink = os.open(fifo, os.O_WRONLY)
    writer = await asyncio.create_subprocess_exec("cat", str(corpus_file), stdout=sink)
    os.close(sink)
    try:
        async with asyncio.timeout(600):
            while writer.returncode is None:
                update = await anext(updates)
            # A last line after any pause: the sequence gap before it counts the last skip.
            await asyncio.sleep(0.5)
            fd = os.open(fifo, os.O_WRONLY)
            os.write(fd, b"6,%d,0,-;end of flood\n" % (lines + 1))
            os.close(fd)
            while sum(s.value for s in update.samples if "kernel_log_" in s.metric) < lines + 1:
                update = await anext(updates)
            return update
    finally:
        await writer.wait()
        await updates.aclose()  # type: ignore[attr-defined]


def bench_probe(corpus: bytes, lines: int, cap: int) -> tuple[float, float, float, float]:
    """(CPU seconds, wall seconds, lines matched, lines counted as dropped); the wall and
    CPU time include the final half-second pause."""
    with tempfile.TemporaryDirectory(prefix="nodemedic-kmsg-") as tmp:
        fifo, corpus_file = Path(tmp) / "kmsg", Path(tmp) / "corpus"
        os.mkfifo(fifo)
        corpus_file.write_bytes(corpus)
        probe = KmsgProbe(patterns=_patterns(), path=fifo, interval=1, max_lines_per_second=cap)
        cpu, wall = time.process_time(), time.monotonic()
        update = asyncio.run(_drain(probe, fifo, corpus_file, lines))
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    values = {(s.metric, s.labels): s.value for s in update.samples}
    matched = values[("nodemedic_kernel_log_lines_total", ())]
    dropped = sum(v for (m, _), v in values.items() if m == "nodemedic_kernel_log_dropped_total")
    return cpu, wall, matched, dropped


def main() -> None:
    """Run the three measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    args = parser.parse_args()
    corpus = _corpus(args.lines)

    per_10k = bench_match(corpus)
    print(
        f"match   split+parse+match, 13 default patterns: {per_10k * 1000:7.1f} ms CPU / 10k lines"
    )

    cpu, wall, matched, dropped = bench_probe(corpus, args.lines, cap=1_000_000)
    print(
        f"probe   uncapped via FIFO: {cpu / matched * 10_000 * 1000:7.1f} ms CPU / 10k lines "
        f"({matched:.0f} matched, {dropped:.0f} dropped, {matched / wall:,.0f} lines/s)"
    )

    cpu, wall, matched, dropped = bench_probe(corpus, args.lines, cap=1000)
    print(
        f"flood   cap 1000 lines/s: {wall:5.2f} s, {matched:.0f} matched, {dropped:.0f} "
        f"skipped and counted, {cpu / wall * 100:5.1f}% of a core "
        f"({cpu / wall * 1000:.1f} ms CPU per second of flood)"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
