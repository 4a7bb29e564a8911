"""Checks that each run on their own interval, reported together as one push probe.

:class:`ScheduledChecks` is the base of the endpoint and custom check probes. ``watch()``
starts one named task per check on the event loop; each runs its check, waits out its
own interval (skipping missed slots rather than bursting) and runs it again. Whenever a
check completes, and at least once per probe ``interval``, the probe yields the complete
current set of every check's series. A check that overstays its timeout is failed by the
base, so a hanging server or plugin delays nothing but itself.

A check's state changes (up to down, OK to CRITICAL) are logged and become events; the
first result is only reported when it is unhealthy.
"""

from __future__ import annotations

__all__ = ["CheckOutcome", "CheckSpec", "ScheduledChecks"]

import abc
import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from agent.errors import ProbeError
from agent.model import Sample
from agent.probes.base import Clock, ProbeEvent, ProbeUpdate, next_beat

log = logging.getLogger(__name__)

_OVERSTAY_GRACE = 1.0
"""Seconds past its timeout before the base fails a check that did not fail itself."""
_STOP_GRACE = 5.0
"""Seconds ``watch`` waits for its check tasks to clean up (kill plugins) when it ends."""


class CheckSpec(Protocol):
    """What the scheduler needs of a check: its name and timing."""

    @property
    def name(self) -> str:
        """Unique within the probe; the ``check`` label."""
        ...

    @property
    def interval(self) -> float:
        """Seconds between the starts of two runs."""
        ...

    @property
    def timeout(self) -> float:
        """Seconds one run may take."""
        ...


CheckT = TypeVar("CheckT", bound=CheckSpec)


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """The result of one run of one check.

    Attributes:
        samples: every series of the check after this run.
        state: ``up``/``down`` or a Nagios status in lower case; a change is an event.
        healthy: False for a state worth a warning (down, WARNING, CRITICAL, UNKNOWN).
        reason: why it is unhealthy, one short line for logs and events; empty when healthy.
        data: more for the state-change event (the target, the status, the latency).
    """

    samples: Sequence[Sample]
    state: str
    healthy: bool
    reason: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


class ScheduledChecks(abc.ABC, Generic[CheckT]):
    """A push probe running each of its checks concurrently on its own interval.

    Subclasses implement :meth:`run_check` and :meth:`overstayed`, and may wrap the
    watch in a shared resource with :meth:`resources` (one HTTP client session).

    Args:
        name: the catalog probe name.
        interval: the longest gap between two updates (> 0).
        timeout: seconds one run of a check may take, at most (> 0).
        checks: the checks; names must be unique.
        clock: monotonic seconds, for durations.

    Raises:
        ValueError: on a non-positive interval or timeout, or a duplicate check name.
    """

    EVENT_PREFIX: ClassVar[str]
    """Events are ``<EVENT_PREFIX>.<state>``, e.g. ``io.nodemedic.endpoint.down``."""

    def __init__(
        self,
        *,
        name: str,
        interval: float,
        timeout: float,
        checks: Sequence[CheckT],
        clock: Clock = time.monotonic,
    ) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError(f"probe {name}: interval and timeout must be positive")
        names = [check.name for check in checks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"probe {name}: duplicate check names {duplicates}")
        self.name = name
        self.interval = float(interval)
        self.timeout = float(timeout)
        self.checks: tuple[CheckT, ...] = tuple(checks)
        self._clock = clock
        self._results: dict[str, CheckOutcome] = {}
        self._events: list[ProbeEvent] = []
        self._completed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- what subclasses provide ----------------------------------------------------

    @abc.abstractmethod
    async def run_check(self, check: CheckT) -> CheckOutcome:
        """Run the check once, within ``check.timeout``; never raises for a failed check."""

    @abc.abstractmethod
    def overstayed(self, check: CheckT, detail: str, elapsed: float) -> CheckOutcome:
        """The outcome of a run the base had to stop (it overstayed, or raised a bug)."""

    def resources(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Opened around a whole watch (e.g. the shared HTTP session); none by default."""
        return contextlib.nullcontext()

    # -- the push probe -------------------------------------------------------------

    async def watch(self) -> AsyncIterator[ProbeUpdate]:
        """Run every check on its interval; yield a full snapshot whenever one completes.

        Raises:
            ProbeError: when a check's schedule stopped unexpectedly (a bug).
        """
        async with self.resources():
            self._results.clear()
            self._events.clear()
            self._completed.clear()
            tasks = [
                asyncio.create_task(self._schedule(check), name=f"check:{self.name}:{check.name}")
                for check in self.checks
            ]
            self._tasks = tasks
            loop = asyncio.get_running_loop()
            # With no checks there is nothing to wait for: the first (empty) snapshot
            # comes at once, not a whole interval later.
            at_once = not self.checks
            try:
                while True:
                    if not at_once:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout_at(next_beat(loop.time(), self.interval)):
                                await self._completed.wait()
                    at_once = False
                    self._completed.clear()
                    dead = next((task for task in tasks if task.done()), None)
                    if dead is not None:
                        raise ProbeError(f"probe {self.name}: {dead.get_name()} stopped: {dead!r}")
                    yield ProbeUpdate(samples=self.snapshot(), events=self._take_events())
            finally:
                await self._stop(tasks)

    async def run_each_once(self) -> list[Sample]:
        """Every check run once, together: the whole reading ``nodemedic check`` prints.

        A watch's first update holds only the checks done by then; this waits for all.
        """
        async with self.resources():
            outcomes = await asyncio.gather(*(self._run_once(check) for check in self.checks))
        return [sample for outcome in outcomes for sample in outcome.samples]

    def snapshot(self) -> list[Sample]:
        """Every check's series from its last completed run."""
        return [sample for outcome in self._results.values() for sample in outcome.samples]

    def close(self) -> None:
        """Cancel the check tasks of a watch that was abandoned without being closed."""
        for task in self._tasks:
            task.cancel()

    # -- scheduling -----------------------------------------------------------------

    async def _schedule(self, check: CheckT) -> None:
        loop = asyncio.get_running_loop()
        next_run = loop.time()
        while True:
            self._record(check, await self._run_once(check))
            next_run += check.interval
            now = loop.time()
            if next_run < now:  # overran: skip the missed slots instead of bursting
                next_run = now + check.interval
            await asyncio.sleep(next_run - now)

    async def _run_once(self, check: CheckT) -> CheckOutcome:
        started = self._clock()
        try:
            # The check enforces its own timeout; this one only guards against a bug.
            async with asyncio.timeout(check.timeout + _OVERSTAY_GRACE):
                return await self.run_check(check)
        except TimeoutError:
            detail = f"did not finish within {check.timeout:g}s"
        except Exception as err:  # a bug in one check must not stop its schedule
            log.exception("probe %s: check %s raised unexpectedly", self.name, check.name)
            detail = f"unexpected {type(err).__name__}: {err}"
        return self.overstayed(check, detail, self._clock() - started)

    def _record(self, check: CheckT, outcome: CheckOutcome) -> None:
        before = self._results.get(check.name)
        self._results[check.name] = outcome
        self._completed.set()
        changed = before is None or before.state != outcome.state
        extra = {"NODEMEDIC_PROBE": self.name, "NODEMEDIC_CHECK": check.name}
        if changed and not outcome.healthy:
            log.warning(
                "check %s/%s is %s: %s", self.name, check.name, outcome.state, outcome.reason,
                extra=extra,
            )  # fmt: skip
        elif changed and before is not None:
            log.info("check %s/%s is %s again", self.name, check.name, outcome.state, extra=extra)
        elif not outcome.healthy and before is not None and before.reason != outcome.reason:
            log.info(
                "check %s/%s still %s, now: %s", self.name, check.name, outcome.state,
                outcome.reason, extra=extra,
            )  # fmt: skip
        if changed and (before is not None or not outcome.healthy):
            data = {
                "check": check.name,
                "state": outcome.state,
                "previous": before.state if before is not None else None,
                "reason": outcome.reason or None,
                **outcome.data,
            }
            self._events.append(
                ProbeEvent(f"{self.EVENT_PREFIX}.{outcome.state}", check.name, data)
            )

    def _take_events(self) -> list[ProbeEvent]:
        events, self._events = self._events, []
        return events

    async def _stop(self, tasks: Sequence[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_STOP_GRACE)
            if pending:
                log.warning("probe %s: %d checks did not stop in time", self.name, len(pending))
        self._tasks = []
