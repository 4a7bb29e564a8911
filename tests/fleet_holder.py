"""A fleet budget member in a process of its own, for the crash test.

``python -m tests.fleet_holder URL NODE TTL`` joins group ``default`` under
:data:`PREFIX` with a budget of one, takes the slot for run ``held-by-NODE``, prints
``held`` and keeps the leases alive until it is killed.
"""

from __future__ import annotations

__all__ = ["PREFIX", "main"]

import asyncio
import sys

from agent.config import FleetBudgetConfig
from remediations.coordination import FleetBudget

PREFIX = "/test/fleet"


async def _hold(url: str, node: str, ttl: int) -> None:
    config = FleetBudgetConfig(
        enabled=True,
        endpoints=(url,),
        prefix=PREFIX,
        max_disruptive=1,
        lease_ttl=f"{ttl}s",
        request_timeout="500ms",
        slot_wait="0s",
    )
    budget = FleetBudget(config, node=node)
    budget.start()
    outcome = await budget.acquire(f"held-by-{node}")
    if outcome.slot is None:
        print(f"refused: {outcome.decision.reason}", flush=True)  # noqa: T201
        return
    print("held", flush=True)  # noqa: T201
    await asyncio.Event().wait()


def main() -> None:
    """Entry point: URL NODE TTL."""
    url, node, ttl = sys.argv[1], sys.argv[2], int(sys.argv[3])
    asyncio.run(_hold(url, node, ttl))


if __name__ == "__main__":
    main()
