"""The fleet budget's values: slots, outcomes, statistics, and a waiter's state.

:mod:`remediations.coordination` keeps the keys in etcd and the safety argument; this
module holds what it passes around.
"""

from __future__ import annotations

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "GATE",
    "RETRIES",
    "FleetStats",
    "Pause",
    "Slot",
    "SlotOutcome",
    "Table",
    "Waiter",
    "budget_for",
]

import math
from collections import Counter
from dataclasses import dataclass, field

from remediations.gates import Decision

GATE = "fleet_budget"
"""The gate name fleet budget decisions carry in the decision record."""


def budget_for(count: int | None, percent: float | None, members: int) -> int:
    """Slots a group may hold: the smaller of ``count`` and ``percent`` of ``members``.

    A percentage rounds down (10% of 15 hosts is 1), but is at least 1 while it is above
    0 and there are members: a small group must still be able to remediate one host.
    """
    limits = [] if count is None else [count]
    if percent is not None:
        share = math.floor(percent * members / 100 + 1e-9)
        limits.append(max(share, 1) if members > 0 else 0)
    return min(limits) if limits else 0


@dataclass(slots=True)
class Slot:
    """A slot held for one run.

    Attributes:
        run_id: the run it was taken for.
        lease: the slot lease's id.
        lost: the lease expired while held (etcd unreachable too long).
    """

    run_id: str
    lease: int
    lost: bool = False


@dataclass(frozen=True, slots=True)
class SlotOutcome:
    """What :meth:`FleetBudget.acquire` decided.

    Attributes:
        decision: the ``fleet_budget`` gate decision for the decision record.
        slot: the slot when granted.
        cause: ``granted``, ``budget_full``, ``etcd_unreachable`` or ``etcd_refused``.
        waited: it waited for a slot (the caller should check its gates again).
    """

    decision: Decision
    slot: Slot | None
    cause: str
    waited: bool = False


@dataclass(slots=True)
class FleetStats:
    """What the metrics read of the budget.

    Attributes:
        held: slots this agent holds now.
        in_use: slots held in the group at the last read.
        budget: the group's budget at the last read.
        failures: refused acquisitions by cause.
        lost: slots whose lease expired while held.
        claims_lost: claims that lost the compare-and-swap to another host.
    """

    held: int = 0
    in_use: int = 0
    budget: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    claims_lost: int = 0


@dataclass(frozen=True, slots=True)
class Table:
    """The group at one revision, as ``FleetBudget`` read it."""

    holders: dict[str, str]  # node -> run
    members: int
    budget: int
    fence_revision: int
    own_revision: int
    queue: list[str]  # waiting queue keys, the longest waiter first
    revision: int


@dataclass(slots=True)
class Waiter:
    """One ``FleetBudget.acquire`` call: its lease (granted once) and queue key."""

    run_id: str
    lease: int | None = None
    renewed: float = 0.0
    queue_key: str | None = None
    losses: int = 0

    def forget(self) -> None:
        """It is no longer in the queue (its key expired or was never put)."""
        self.queue_key = None


@dataclass(frozen=True, slots=True)
class Pause:
    """What a waiter waits for: a delete of ``key`` after ``revision``, or ``delay`` s."""

    key: str | None = None
    prefix: bool = False
    revision: int = 0
    delay: float = 0.0
    retry: bool = False  # after a lost claim: read again even past the deadline


BACKOFF_BASE = 0.01
"""Seconds: the first bound of the jittered back-off after a lost claim (doubles)."""
BACKOFF_CAP = 0.5
"""Seconds: the largest bound of that back-off."""
RETRIES = 20
"""Lost claims after which the deadline applies again (a slot that looked free is
tried again past ``slot_wait``, as a lost claim says nothing about the budget)."""
