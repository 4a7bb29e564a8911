"""Following a push probe's updates in tests, with a bound on how long it may take."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agent.model import LabelSet, Sample
from agent.probes.base import ProbeUpdate, PushProbe


async def watch_until(
    probe: PushProbe, done: Callable[[list[ProbeUpdate]], bool], *, within: float = 30.0
) -> list[ProbeUpdate]:
    """Iterate ``probe.watch()`` until ``done(updates so far)``; closes the watch after.

    Raises:
        TimeoutError: when ``done`` is not reached within ``within`` seconds (generous:
            the machine is shared; this bounds a hung test, it measures nothing).
    """
    updates: list[ProbeUpdate] = []
    watch = probe.watch()
    try:
        async with asyncio.timeout(within):
            async for update in watch:
                updates.append(update)
                if done(updates):
                    return updates
    finally:
        await watch.aclose()  # type: ignore[attr-defined]
    raise AssertionError("the watch ended")


def series(samples: list[Sample] | tuple[Sample, ...]) -> dict[tuple[str, LabelSet], float]:
    """Samples keyed by (metric, labels)."""
    return {(sample.metric, sample.labels): sample.value for sample in samples}


def value(update: ProbeUpdate, metric: str, **labels: str) -> float | None:
    """The value of one series in an update, or None when it is absent."""
    return series(tuple(update.samples)).get((metric, tuple(sorted(labels.items()))))


def has(metric: str, expected: float, **labels: str) -> Callable[[list[ProbeUpdate]], bool]:
    """A ``done`` for :func:`watch_until`: the last update has the series at ``expected``."""
    return lambda updates: value(updates[-1], metric, **labels) == expected
