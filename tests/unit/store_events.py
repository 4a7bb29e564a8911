"""Events appended to a real store for the outbox tests."""

from __future__ import annotations

__all__ = ["emit"]

from agent.store import Store


def emit(store: Store, n: int) -> None:
    """Append ``n`` probe-failed events with outbox rows, one second apart."""
    for i in range(n):
        store.append_event(
            source="nodemedic://node-1",
            type="io.nodemedic.probe.failed",
            subject="disk",
            data={"i": i},
            time=1_700_000_000.0 + i,
            outbox=True,
        )
