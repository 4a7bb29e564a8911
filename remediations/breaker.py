"""The circuit breaker and loop guard, derived from the journal's run history.

Nothing here is kept in memory between calls: the breaker's state is a function of the
playbook's finished runs, its last manual reset and its last loop-guard trip, so it
survives restarts exactly as the journal does.

* ``failures`` failed runs in a row open the breaker at the last failure.
* A loop-guard trip opens it too, until a run succeeds after the trip.
* ``reset_after`` later it is half-open: one trial run may start. If the trial fails
  the breaker opens again from that failure; if it succeeds it closes.
* A manual reset forgets everything before it.
"""

from __future__ import annotations

__all__ = [
    "CONDITION_SOURCE",
    "BreakerState",
    "BreakerStatus",
    "RunRecord",
    "breaker_status",
    "loop_returns",
]

import bisect
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from remediations.model import Breaker, LoopGuard, RunState

# The source of a run a firing condition requested (operators' runs name who asked).
CONDITION_SOURCE = "condition"


@dataclass(frozen=True, slots=True)
class RunRecord:
    """What the gates need to know of one run.

    Attributes:
        run_id: the journal id.
        playbook: the playbook's name.
        target: the rendered target.
        state: the run's state.
        source: ``condition`` or ``remote:<who>`` or ``api``.
        requested: epoch seconds the trigger arrived.
        started: epoch seconds the first step started, or None.
        finished: epoch seconds the run ended, or None.
        would_run: an observe-mode run that passed every gate.
        disruptive: the run's playbook or one of its steps is disruptive.
    """

    run_id: str
    playbook: str
    target: str
    state: RunState
    source: str
    requested: float
    started: float | None = None
    finished: float | None = None
    would_run: bool = False
    disruptive: bool = False

    @property
    def acted(self) -> bool:
        """The run went past the gates (executed, or in observe mode would have)."""
        return self.started is not None or self.would_run

    @property
    def acted_at(self) -> float:
        """When it went past the gates."""
        return self.started if self.started is not None else self.requested


class BreakerState(enum.StrEnum):
    """closed: runs may start; open: none may; half_open: one trial may."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    @property
    def gauge(self) -> float:
        """0 closed, 1 open, 0.5 half-open (the metric's value)."""
        return {"closed": 0.0, "open": 1.0, "half_open": 0.5}[self.value]


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """A playbook's breaker now.

    Attributes:
        state: closed, open or half-open.
        failures: failed runs in a row (since the last success or reset).
        opened_at: when it opened, None when closed.
        reason: for humans.
    """

    state: BreakerState
    failures: int
    opened_at: float | None
    reason: str


def breaker_status(
    runs: Iterable[RunRecord],
    policy: Breaker,
    now: float,
    *,
    reset_at: float = 0.0,
    tripped_at: float | None = None,
) -> BreakerStatus:
    """The breaker of one playbook given its runs (any order, any targets)."""
    finished = sorted(
        (r for r in runs if r.finished is not None and r.finished >= reset_at and r.state in _ENDS),
        key=lambda r: r.finished or 0.0,
    )
    failures = 0
    last_failure: float | None = None
    last_success: float | None = None
    for run in finished:
        if run.state is RunState.FAILED:
            failures += 1
            last_failure = run.finished
        else:
            failures = 0
            last_success = run.finished
    opened_at: float | None = None
    why = ""
    if failures >= policy.failures:
        opened_at = last_failure
        why = f"{failures} failed runs in a row (limit {policy.failures})"
    if (
        tripped_at is not None
        and tripped_at >= reset_at
        and (last_success is None or last_success < tripped_at)
    ):
        later = max(tripped_at, last_failure or 0.0)
        if opened_at is None or later > opened_at:
            opened_at = later
        why = why or "the loop guard tripped it"
    if opened_at is None:
        return BreakerStatus(BreakerState.CLOSED, failures, None, "closed")
    reopen = opened_at + policy.reset_after.total_seconds()
    if now < reopen:
        return BreakerStatus(
            BreakerState.OPEN,
            failures,
            opened_at,
            f"open: {why}; half-opens in {reopen - now:.0f}s or on a manual reset",
        )
    return BreakerStatus(
        BreakerState.HALF_OPEN, failures, opened_at, f"half-open after {why}: one trial run"
    )


_ENDS = frozenset({RunState.SUCCEEDED, RunState.FAILED})


def loop_returns(
    runs: Sequence[RunRecord],
    guard: LoopGuard,
    now: float,
    *,
    since: float = 0.0,
    by_condition: bool = True,
) -> int:
    """How often the condition came back within ``guard.within`` of a success.

    Counts, for one playbook and target, the successes after ``since`` whose next
    request, the current one at ``now`` included, came from the condition within the
    window. ``by_condition`` is False when the current request is an operator's: a run
    asked for by hand is not the condition coming back, and a success followed by one
    is not counted on the condition's next return.
    """
    window = guard.within.total_seconds()
    requests = sorted(
        [(r.requested, r.source == CONDITION_SOURCE) for r in runs] + [(now, by_condition)],
        key=lambda request: request[0],
    )
    times = [at for at, _ in requests]
    returns = 0
    for run in runs:
        done = run.finished
        if run.state is not RunState.SUCCEEDED or done is None or done < since:
            continue
        following = bisect.bisect_right(times, done)  # the first request after the success
        if following == len(requests):
            continue
        at, from_condition = requests[following]
        if from_condition and at <= done + window:
            returns += 1
    return returns
