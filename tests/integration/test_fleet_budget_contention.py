"""The fleet budget under contention, against a real etcd (Debian's 3.4, on loopback).

Many :class:`FleetBudget` objects want a slot at once. What the tests count is what etcd
itself counts (its ``/metrics``: leases granted, transactions) and the order in which
waiters were served; no timings are asserted.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from agent.config import FleetBudgetConfig
from remediations.coordination import FleetBudget
from tests.etcd import BUDGET, EtcdServer, budget_config, etcd_fixture
from tests.fleet_holder import PREFIX

__all__ = ["etcd_fixture"]

pytestmark = pytest.mark.etcd

WAITERS, ROUNDS = 20, 3
QUEUE = f"{PREFIX}/queue/default/"


def _budget(etcd: EtcdServer, **overrides: Any) -> FleetBudgetConfig:
    """Waiters that queue for minutes and look every 2 s (watches wake them sooner)."""
    return budget_config(etcd, **({"slot_wait": "240s", "poll_interval": "2s"} | overrides))


def _metric(etcd: EtcdServer, name: str) -> float:
    """The sum of every series of ``name`` in etcd's own Prometheus metrics."""
    with urllib.request.urlopen(f"{etcd.url}/metrics", timeout=10) as resp:  # noqa: S310
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _until(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after 60 seconds."""
    deadline = time.monotonic() + 60.0
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within 60s: {what}")
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_twenty_waiters_for_three_slots_take_one_lease_per_slot(
    etcd: EtcdServer,
) -> None:
    fleets = [FleetBudget(_budget(etcd), node=f"waiter-{i:02d}") for i in range(WAITERS)]
    for fleet in fleets:
        fleet.start()
    await _until(lambda: len(etcd.keys(f"{PREFIX}/members/")) == WAITERS, "every member joined")
    granted_before = _metric(etcd, "etcd_debugging_lease_granted_total")
    holding = {"now": 0, "most": 0}

    async def waiter(fleet: FleetBudget) -> int:
        taken = 0
        for round_ in range(ROUNDS):
            outcome = await fleet.acquire(f"{fleet.group}-{round_}")
            assert outcome.slot is not None, outcome.decision.reason
            holding["now"] += 1
            holding["most"] = max(holding["most"], holding["now"])
            await asyncio.sleep(0.02)
            holding["now"] -= 1
            await fleet.release(outcome.slot)
            taken += 1
        return taken

    try:
        async with asyncio.timeout(300):
            taken = await asyncio.gather(*(waiter(f) for f in fleets))
    finally:
        for fleet in fleets:
            await fleet.aclose()
    acquisitions = WAITERS * ROUNDS
    grants = _metric(etcd, "etcd_debugging_lease_granted_total") - granted_before
    lost = sum(f.stats.claims_lost for f in fleets)
    print(  # noqa: T201
        f"{acquisitions} acquisitions by {WAITERS} waiters for {BUDGET} slots: "
        f"{grants:.0f} leases granted in etcd, {lost} claims lost"
    )
    assert sum(taken) == acquisitions
    assert holding["most"] <= BUDGET
    # One lease per acquire(), whatever the claims lost: a re-grant only where a
    # waiting lease expired under CPU starvation (a few, never one per attempt).
    assert grants <= acquisitions + 5
    # A claim is lost only to one that won in between. At the start every waiter finds
    # the queue empty and slots free, so each of the first BUDGET wins can cost every
    # other waiter a claim; after that only the first BUDGET of the queue claim, so an
    # acquisition costs at most the other BUDGET - 1 a lost claim. How many are lost
    # depends on the scheduling (38 in a quiet run, 76 on a loaded machine); a herd in
    # which every waiter claims at every release would lose up to WAITERS - 1 each time.
    start = sum(WAITERS - 1 - k for k in range(BUDGET))
    assert lost <= start + (BUDGET - 1) * (acquisitions - BUDGET)
    assert etcd.keys(f"{PREFIX}/slots/") == []
    assert etcd.keys(QUEUE) == []


@pytest.mark.asyncio
async def test_the_longest_waiter_gets_the_next_free_slot(etcd: EtcdServer) -> None:
    config = _budget(etcd, max_disruptive=1)
    holder, *waiters = (FleetBudget(config, node=n) for n in ("holder", "first", "second"))
    try:
        held = await holder.acquire("run-held")
        assert held.slot is not None
        order: list[str] = []

        async def wait(fleet: FleetBudget, node: str) -> None:
            outcome = await fleet.acquire(f"run-{node}")
            assert outcome.slot is not None, outcome.decision.reason
            order.append(node)
            await fleet.release(outcome.slot)

        first = asyncio.get_running_loop().create_task(wait(waiters[0], "first"))
        await _until(lambda: len(etcd.keys(QUEUE)) == 1, "the first waiter queued")
        second = asyncio.get_running_loop().create_task(wait(waiters[1], "second"))
        await _until(lambda: len(etcd.keys(QUEUE)) == 2, "the second waiter queued")
        await holder.release(held.slot)
        async with asyncio.timeout(120):
            await asyncio.gather(first, second)
        assert order == ["first", "second"]
        assert etcd.keys(QUEUE) == []
    finally:
        for fleet in (holder, *waiters):
            await fleet.aclose()


@pytest.mark.asyncio
async def test_a_waiter_that_gives_up_leaves_the_queue(etcd: EtcdServer) -> None:
    config = _budget(etcd, max_disruptive=1, slot_wait="1s")
    holder, waiter = FleetBudget(config, node="holder"), FleetBudget(config, node="waiter")
    try:
        held = await holder.acquire("run-held")
        assert held.slot is not None
        outcome = await waiter.acquire("run-waiting")
        assert outcome.slot is None
        assert outcome.cause == "budget_full"
        assert "1 of 1 slots held" in outcome.decision.reason
        assert etcd.keys(QUEUE) == []
    finally:
        await holder.aclose()
        await waiter.aclose()
