"""Fleet simulation: fan-out latency of a signed fleet command, and a correlated failure.

Starts one Mosquitto and one etcd on loopback, then ``--nodes`` simulated nodes (real
agents, :mod:`bench.fleet.node`) in ``--workers`` processes. Phase 1 sends ``--rounds``
signed ``status`` commands to the whole fleet on ``fleet/commands`` and times every
node's reply from the publish to its arrival; reports p50/p99/max, and the RSS per
simulated node beside the workers' import floor. Phase 2 makes 30 % of the nodes breach
at once; each runs its disruptive drain playbook under a fleet budget of 5 in etcd; an
etcd watch on the slot keys reports the most held at once and the time to work through.

Prints a table and writes bench/results/fleet.json.

Usage: python -m bench.fleet [--nodes 1000] [--workers 4] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from bench.fleet.run import run_fleet

RESULTS = Path(__file__).resolve().parent.parent / "results" / "fleet.json"


def _table(summary: dict[str, Any]) -> str:
    fan = summary["fan_out"]
    mem = summary["memory"]
    fail = summary["correlated_failure"]
    nodes = summary["nodes"]
    lines = [
        f"fleet: {nodes} nodes in {summary['workers']} workers "
        f"(all connected in {summary['startup_s']} s)",
        "",
        "phase 1: signed fleet command -> every reply",
        f"  {'round':<6}{'replies':>12}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}",
    ]
    for index, row in enumerate([*fan["rounds"], fan["all"]]):
        last = index == len(fan["rounds"])
        name = "all" if last else str(index + 1)
        expected = nodes * len(fan["rounds"]) if last else nodes
        lines.append(
            f"  {name:<6}{row['replies']:>7}/{expected:<5}{row['p50_ms']:>10}"
            f"{row['p99_ms']:>10}{row['max_ms']:>10}"
        )
    lines += [
        f"  memory: {mem['kib_per_node'] / 1024:.2f} MiB per simulated node above the import "
        f"floor of {max(mem['floor_kib']) / 1024:.1f} MiB per worker "
        f"(worker RSS {', '.join(f'{r / 1024:.0f}' for r in mem['rss_kib'])} MiB)",
        "",
        f"phase 2: {fail['failing']} nodes fail at once, fleet budget {fail['budget']} in etcd, "
        f"drain {fail['drain_s']} s",
        f"  most slots held at once (etcd watch): {fail['max_concurrent']} "
        f"(budget {fail['budget']}); slot grants {fail['slot_grants']}",
        f"  worked through in {fail['total_s']} s (ideal {fail['ideal_s']} s); "
        f"succeeded {fail['succeeded']}, skipped {fail['skipped']}, failed {fail['failed']}, "
        f"finished {fail['finished']}/{fail['failing']}",
        f"  {fail['slot_grants'] / max(fail['total_s'], 0.01):.1f} slots granted per second; "
        f"etcd used {fail.get('etcd_cpu_s', 0):.2f} s of CPU "
        f"({100 * fail.get('etcd_cpu_s', 0) / max(fail['total_s'], 0.01):.0f} % of a core)",
    ]
    return "\n".join(lines)


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="100 nodes, 2 workers, 2 rounds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.workers, args.rounds = 100, 2, 2
    with tempfile.TemporaryDirectory(prefix="nodemedic-fleet-") as tmp:
        result = asyncio.run(
            run_fleet(Path(tmp), nodes=args.nodes, workers=args.workers, rounds=args.rounds)
        )
    summary = result.summary()
    print(_table(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
