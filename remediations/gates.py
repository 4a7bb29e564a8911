"""The safety gates, evaluated in a fixed order for every trigger and again before execution.

Each gate is a pure function of a :class:`GateInput` (the clock is a number in it) and
returns a :class:`Decision` naming the gate and a reason a human can act on. The first
gate that says no ends the evaluation; every decision is journalled. The order:

pause -> window -> mode -> target_policy -> preconditions -> cooldown -> rate_limit ->
breaker -> loop_guard -> concurrency -> storm -> approval.

The mode gate lets an ``observe`` playbook through so the later gates can tell whether
it *would* run; the engine then records ``would_run`` instead of executing.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_PROTECTED",
    "GATES",
    "Decision",
    "GateInput",
    "evaluate",
    "in_window",
]

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any
from zoneinfo import ZoneInfo

from agent.config import RemediationWindow
from remediations.breaker import BreakerState, BreakerStatus, RunRecord, loop_returns
from remediations.model import Mode, Playbook

DEFAULT_PROTECTED: tuple[str, ...] = (
    "1",
    "init.scope",
    "-.mount",
    "sshd.service",
    "ssh.service",
    "ssh.socket",
    "dbus.service",
    "dbus.socket",
    "dbus-broker.service",
    "systemd-journald.service",
    "nodemedic.service",
)
"""Targets never touched, whatever the allowlist says; the agent's own PID is added."""

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class Decision:
    """One gate's answer.

    Attributes:
        gate: the gate's name (``cooldown``).
        allowed: True when the gate lets the run through.
        reason: for humans, e.g. ``last run 120s ago; cooldown is 300s``.
    """

    gate: str
    allowed: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        """The decision as the journal, events and the API show it."""
        return {"gate": self.gate, "allowed": self.allowed, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class GateInput:
    """Everything the gates look at, gathered by the engine at one instant.

    Attributes:
        now: epoch seconds.
        run_id: the run being decided (excluded from its own history).
        playbook: the playbook.
        target: the rendered target.
        disruptive: the playbook or one of its steps is disruptive.
        paused: why remediation is paused, or None.
        windows: the configured maintenance and blackout windows.
        protected: glob patterns of targets never touched.
        allowlist: glob patterns of targets that may be touched; empty allows all.
        condition_firing: whether a triggering condition for this target fires now.
        firing: how many conditions fire on the host now.
        storm_threshold: more firing conditions than this hold disruptive runs.
        history: this playbook's recent runs (every target).
        target_history: recent runs of this playbook on this target.
        active: runs on this host that are running or verifying (any playbook).
        breaker: the playbook's breaker.
        loop_since: loop-guard returns before this time are forgotten (reset or trip).
        condition_triggered: a firing condition requested the run (not an operator).
        approved: a signed approval of this run has been recorded.
    """

    now: float
    run_id: str
    playbook: Playbook
    target: str
    disruptive: bool
    paused: str | None = None
    windows: Sequence[RemediationWindow] = ()
    protected: Sequence[str] = DEFAULT_PROTECTED
    allowlist: Sequence[str] = ()
    condition_firing: bool = True
    firing: int = 0
    storm_threshold: int = 10
    history: Sequence[RunRecord] = ()
    target_history: Sequence[RunRecord] = ()
    active: Sequence[RunRecord] = ()
    breaker: BreakerStatus = field(
        default_factory=lambda: BreakerStatus(BreakerState.CLOSED, 0, None, "closed")
    )
    loop_since: float = 0.0
    condition_triggered: bool = True
    approved: bool = False


Gate = Callable[[GateInput], Decision]


def _pause(inp: GateInput) -> Decision:
    if inp.paused is not None:
        return Decision("pause", False, f"remediation is paused: {inp.paused}")
    return Decision("pause", True, "not paused")


def in_window(window: RemediationWindow, now: float) -> bool:
    """True if epoch ``now`` falls inside ``window`` (in the window's time zone)."""
    local = datetime.fromtimestamp(now, UTC).astimezone(ZoneInfo(window.timezone))
    clock = local.time().replace(tzinfo=None)
    today = _DAYS[local.weekday()]
    yesterday = _DAYS[(local.weekday() - 1) % 7]
    if window.start <= window.end:
        return today in window.days and window.start <= clock < window.end
    # Past midnight: the evening part belongs to today, the morning part to yesterday.
    return (today in window.days and clock >= window.start) or (
        yesterday in window.days and clock < window.end
    )


def _window(inp: GateInput) -> Decision:
    for window in inp.windows:
        if window.kind == "blackout" and in_window(window, inp.now):
            return Decision("window", False, f"inside blackout window {window.name!r}")
    maintenance = [w for w in inp.windows if w.kind == "maintenance"]
    if inp.disruptive and maintenance:
        inside = [w.name for w in maintenance if in_window(w, inp.now)]
        if not inside:
            names = ", ".join(repr(w.name) for w in maintenance)
            return Decision(
                "window",
                False,
                f"disruptive playbooks run only inside maintenance windows ({names})",
            )
        return Decision("window", True, f"inside maintenance window {inside[0]!r}")
    return Decision("window", True, "no blackout window now")


def _mode(inp: GateInput) -> Decision:
    mode = inp.playbook.mode
    if mode is Mode.OBSERVE:
        return Decision(
            "mode", True, "observe mode: the run is recorded as would-run, not executed"
        )
    if mode is Mode.DRY_RUN:
        return Decision("mode", True, "dry_run mode: the steps report what they would do")
    return Decision("mode", True, "enforce mode")


def _target_policy(inp: GateInput) -> Decision:
    for pattern in inp.protected:
        if fnmatchcase(inp.target, pattern):
            return Decision(
                "target_policy", False, f"target {inp.target!r} is protected (matches {pattern!r})"
            )
    if inp.allowlist and not any(fnmatchcase(inp.target, p) for p in inp.allowlist):
        return Decision(
            "target_policy",
            False,
            f"target {inp.target!r} is not in the allowlist ({', '.join(inp.allowlist)})",
        )
    return Decision("target_policy", True, f"target {inp.target!r} may be touched")


def _preconditions(inp: GateInput) -> Decision:
    for pre in inp.playbook.preconditions:
        if pre.condition_firing != inp.condition_firing:
            now = "firing" if inp.condition_firing else "not firing"
            want = "firing" if pre.condition_firing else "not firing"
            return Decision(
                "preconditions", False, f"the condition for {inp.target!r} is {now}; needs {want}"
            )
    return Decision("preconditions", True, "preconditions hold")


def _cooldown(inp: GateInput) -> Decision:
    cooldown = inp.playbook.safety.cooldown.total_seconds()
    acted = [r.acted_at for r in inp.target_history if r.run_id != inp.run_id and r.acted]
    if acted:
        since = inp.now - max(acted)
        if since < cooldown:
            return Decision(
                "cooldown",
                False,
                f"last run on {inp.target!r} {since:.0f}s ago; cooldown is {cooldown:.0f}s",
            )
    return Decision("cooldown", True, f"no run on {inp.target!r} within {cooldown:.0f}s")


def _rate_limit(inp: GateInput) -> Decision:
    limit = inp.playbook.safety.max_runs
    per = limit.per.total_seconds()
    recent = [
        r
        for r in inp.history
        if r.run_id != inp.run_id and r.acted and inp.now - per < r.acted_at <= inp.now
    ]
    if len(recent) >= limit.count:
        return Decision(
            "rate_limit", False, f"{len(recent)} runs in the last {per:.0f}s; limit {limit.count}"
        )
    return Decision("rate_limit", True, f"{len(recent)} of {limit.count} runs per {per:.0f}s")


def _breaker(inp: GateInput) -> Decision:
    status = inp.breaker
    if status.state is BreakerState.OPEN:
        return Decision("breaker", False, f"circuit breaker {status.reason}")
    if status.state is BreakerState.HALF_OPEN:
        trial = [r for r in inp.history if r.run_id != inp.run_id and r.state.active]
        if trial:
            return Decision("breaker", False, "circuit breaker half-open: a trial run is in flight")
        return Decision("breaker", True, f"circuit breaker {status.reason}")
    return Decision("breaker", True, "circuit breaker closed")


def _loop_guard(inp: GateInput) -> Decision:
    guard = inp.playbook.safety.loop_guard
    history = [r for r in inp.target_history if r.run_id != inp.run_id]
    returns = loop_returns(
        history, guard, inp.now, since=inp.loop_since, by_condition=inp.condition_triggered
    )
    if returns >= guard.returns:
        return Decision(
            "loop_guard",
            False,
            f"the condition came back within {guard.within.total_seconds():.0f}s of a success "
            f"{returns} times (limit {guard.returns}); tripping the breaker",
        )
    if not inp.condition_triggered:
        return Decision(
            "loop_guard", True, f"{returns} returns after success; an operator's run is not one"
        )
    return Decision("loop_guard", True, f"{returns} returns after success")


def _concurrency(inp: GateInput) -> Decision:
    others = [r for r in inp.active if r.run_id != inp.run_id]
    for run in others:
        if run.target == inp.target:
            return Decision(
                "concurrency",
                False,
                f"run {run.run_id} ({run.playbook}) is already acting on {inp.target!r}",
            )
    if inp.disruptive and inp.playbook.mode is not Mode.OBSERVE:
        for run in others:
            if run.disruptive:
                return Decision(
                    "concurrency",
                    False,
                    f"disruptive run {run.run_id} ({run.playbook}) is in progress on this host",
                )
    return Decision("concurrency", True, "no conflicting run on this host")


def _storm(inp: GateInput) -> Decision:
    if inp.disruptive and inp.firing > inp.storm_threshold:
        return Decision(
            "storm",
            False,
            f"{inp.firing} conditions are firing (threshold {inp.storm_threshold}); disruptive "
            "playbooks hold: when everything looks sick, the problem may be the agent or the host",
        )
    return Decision("storm", True, f"{inp.firing} conditions firing")


def _approval(inp: GateInput) -> Decision:
    if inp.playbook.safety.approval == "required" and inp.playbook.mode is Mode.ENFORCE:
        if inp.approved:
            return Decision("approval", True, "approved")
        return Decision(
            "approval", False, "the playbook requires a signed approval; none has been given"
        )
    return Decision("approval", True, "no approval needed")


GATES: tuple[tuple[str, Gate], ...] = (
    ("pause", _pause),
    ("window", _window),
    ("mode", _mode),
    ("target_policy", _target_policy),
    ("preconditions", _preconditions),
    ("cooldown", _cooldown),
    ("rate_limit", _rate_limit),
    ("breaker", _breaker),
    ("loop_guard", _loop_guard),
    ("concurrency", _concurrency),
    ("storm", _storm),
    ("approval", _approval),
)
"""Every gate by name, in evaluation order."""


def evaluate(inp: GateInput) -> list[Decision]:
    """Run the gates in order; the list ends with the first refusal, if any."""
    decisions: list[Decision] = []
    for _, gate in GATES:
        decision = gate(inp)
        decisions.append(decision)
        if not decision.allowed:
            break
    return decisions
