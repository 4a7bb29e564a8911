"""The fleet bench's machinery at a small scale: real agents, Mosquitto and etcd.

Twenty simulated nodes (real :class:`agent.runtime.Agent` objects, :mod:`bench.fleet.node`)
in two worker processes answer signed fleet commands, and a correlated failure of 30 %
works through a budget of 2 held in etcd. Only outcomes are asserted, never timings.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.fleet.run import run_fleet

pytestmark = [pytest.mark.mosquitto, pytest.mark.etcd]

NODES, BUDGET = 20, 2


def test_every_node_answers_and_never_more_than_the_budget_drain_at_once(tmp_path: Path) -> None:
    result = asyncio.run(
        run_fleet(
            tmp_path,
            nodes=NODES,
            workers=2,
            rounds=2,
            spec_overrides={"budget": BUDGET, "drain_seconds": 0.3, "poll_interval": 0.5},
        )
    )
    summary = result.summary()

    for round_ in result.rounds:
        assert sorted(round_["replies"]) == [f"sim-{i:04d}" for i in range(NODES)]
        assert round_["refused"] == 0
    assert summary["fan_out"]["all"]["replies"] == 2 * NODES
    failure = summary["correlated_failure"]
    assert failure["failing"] == 6
    assert failure["finished"] == failure["succeeded"] == 6
    # etcd's own watch: the slots never exceeded the budget, and each drain took one.
    assert 1 <= failure["max_concurrent"] <= BUDGET
    assert failure["slot_grants"] == 6
    assert all(held <= BUDGET for _, held in failure["timeline"])
    assert summary["memory"]["kib_per_node"] > 0
