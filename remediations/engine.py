"""The remediation engine: triggers become journalled runs that pass the gates, then act.

A trigger (a condition going to firing, or :meth:`RemediationEngine.request` from a
remote command or the API) is recorded as a run, evaluated by the gates, and either
skipped (``.skipped`` with the gate and reason), recorded as would-run (observe mode,
``.would_run`` with the exact rendered steps), or executed in a task of its own: the
gates are evaluated again right before the first step, the steps run with their
timeouts and retries, ``verify`` waits for the condition to resolve, and on failure the
``on_failure`` steps run. Every decision is an event and a journal row.

Crash safety (:meth:`RemediationEngine.reconcile`) is in :mod:`remediations.recovery`.
"""

from __future__ import annotations

__all__ = ["RemediationEngine", "RemediationRequestError"]

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent.config import RemediationConfig
from agent.errors import AgentError
from agent.model import Condition, ConditionState, Event
from remediations.actions.base import Action, ActionServices
from remediations.breaker import (
    CONDITION_SOURCE,
    BreakerState,
    BreakerStatus,
    RunRecord,
    breaker_status,
)
from remediations.coordination import GATE as FLEET_GATE
from remediations.coordination import FleetBudget, Slot
from remediations.execution import Emit, RunContext, StepRunner
from remediations.gates import DEFAULT_PROTECTED, Decision, GateInput, evaluate
from remediations.journal import Journal
from remediations.library import PlaybookLibrary
from remediations.model import Mode, Playbook, RenderError, RunState, render_params
from remediations.steps import (
    on_failure_idempotent,
    params_problem,
    playbook_disruptive,
    step_idempotent,
)

log = logging.getLogger(__name__)

_FIRING = "io.nodemedic.condition.firing"
_PREFIX = "io.nodemedic.remediation."
_VERIFY_POLL = 0.2


class RemediationRequestError(AgentError):
    """Raised when a request names an unknown playbook, or one that may not run remotely."""


class RemediationEngine:
    """Receives triggers, gates them, executes and journals runs.

    Args:
        library: the loaded playbooks.
        actions: action classes by name.
        journal: the run journal.
        config: the ``remediation`` config section.
        conditions: returns the agent's current conditions.
        emit: records an event (type, subject, data).
        services: what actions act through.
        clock: epoch seconds (injected in tests).
        fleet: the fleet budget disruptive runs take a slot of, or None.
    """

    def __init__(
        self,
        *,
        library: PlaybookLibrary,
        actions: Mapping[str, type[Action]],
        journal: Journal,
        config: RemediationConfig,
        conditions: Callable[[], Sequence[Condition]],
        emit: Emit,
        services: ActionServices,
        clock: Callable[[], float] = time.time,
        fleet: FleetBudget | None = None,
    ) -> None:
        self.library = library
        self.fleet = fleet
        self.journal = journal
        self._config = config
        self._conditions = conditions
        self._emit = emit
        self._clock = clock
        self._steps = StepRunner(
            actions=actions, journal=journal, services=services, emit=emit, clock=clock
        )
        self._actions = actions
        self._protected = (
            *DEFAULT_PROTECTED,
            *(str(pid) for pid in sorted(services.protected_pids)),
            *config.protected_targets,
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._labels: dict[str, Mapping[str, str]] = {}
        self._approval_timer: asyncio.TimerHandle | None = None

    # -- triggers ----------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Handle one bus event: a condition going to firing triggers its playbooks."""
        if event.type != _FIRING:
            return
        rule = str(event.data.get("rule", event.subject or ""))
        raw = event.data.get("labels") or {}
        labels = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}
        for playbook in self.library.triggered_by(rule):
            try:
                target = playbook.target_for(labels)
            except RenderError as err:
                log.warning("playbook %s: cannot target condition %s: %s", playbook.name, rule, err)
                continue
            self._start(
                playbook, target, CONDITION_SOURCE, {"rule": rule, "labels": labels}, labels
            )

    async def consume(self, events: Any) -> None:
        """Feed every event of a bus subscription to :meth:`on_event` until it ends."""
        async for event in events:
            try:
                self.on_event(event)
            except AgentError as err:  # a store failure skips one trigger, not the engine
                log.error("remediation trigger %s failed: %s", event.type, err)

    def request(
        self,
        playbook: str,
        target: str | None = None,
        *,
        source: str = "api",
        labels: Mapping[str, str] | None = None,
    ) -> RunRecord:
        """A remote or manual trigger (the entry point for signed commands and the API).

        Args:
            playbook: the playbook's name.
            target: what it acts on (default: its target, when that needs no labels).
            source: who asked, for the journal.
            labels: values for the playbook's ``{labels.NAME}`` placeholders, over those
                of the firing condition on the same target.

        Returns:
            The run as recorded after the trigger-time gates.

        Raises:
            RemediationRequestError: unknown playbook, not remote-triggerable, or no target.
        """
        found = self.library.playbooks.get(playbook)
        if found is None:
            known = ", ".join(sorted(self.library.playbooks)) or "none"
            raise RemediationRequestError(f"no playbook named {playbook!r} (loaded: {known})")
        if not found.trigger.remote:
            raise RemediationRequestError(
                f"playbook {playbook!r} does not allow remote runs (trigger.remote is false)"
            )
        if target is None:
            if found.label_names:
                raise RemediationRequestError(
                    f"playbook {playbook!r} targets {found.target!r}; give a target"
                )
            target = found.target
        merged = {**self._labels_for(found, target), **(labels or {})}
        trigger = {"source": source, "target": target, "labels": dict(labels or {})}
        return self._start(found, target, source, trigger, merged)

    def _labels_for(self, playbook: Playbook, target: str) -> dict[str, str]:
        for condition in self.firing_for(playbook, target):
            return dict(condition.labels)
        return {}

    def _run_labels(self, playbook: Playbook, run: RunRecord) -> dict[str, str]:
        # A run carried on later (approved, resumed after a crash) keeps the labels it was
        # triggered with (a remote run's params, its condition's labels) over those of
        # whatever fires now: without them its placeholders would no longer render.
        recorded = self.journal.trigger_of(run.run_id).get("labels")
        kept = {str(k): str(v) for k, v in recorded.items()} if isinstance(recorded, dict) else {}
        return {**self._labels_for(playbook, run.target), **kept}

    def _start(
        self,
        playbook: Playbook,
        target: str,
        source: str,
        trigger: Mapping[str, Any],
        labels: Mapping[str, str],
    ) -> RunRecord:
        now = self._clock()
        problem = params_problem(self._actions, playbook, target, labels)
        disruptive = problem is not None or self.disruptive(playbook, target, labels)
        run = self.journal.create(
            playbook=playbook.name,
            target=target,
            source=source,
            mode=playbook.mode.value,
            disruptive=disruptive,
            trigger=trigger,
            now=now,
        )
        self._event("requested", run, {"source": source, "mode": playbook.mode.value})
        if problem is not None:
            # Steps that cannot be rendered for this target never reach the gates.
            refusal = Decision("params", allowed=False, reason=problem)
            self.journal.decide(run.run_id, "trigger", [refusal], now)
            self._skip(run, playbook, refusal, "trigger")
            return run
        if not self._gate(run, playbook, "trigger"):
            return run
        if playbook.mode is Mode.OBSERVE:
            self._would_run(run, playbook, labels)
            return run
        self.journal.transition(run.run_id, RunState.GATED, self._clock())
        self._spawn(run, playbook, labels, self._execute(run, playbook, labels))
        return run

    def _spawn(
        self, run: RunRecord, playbook: Playbook, labels: Mapping[str, str], work: Any
    ) -> None:
        self._labels[run.run_id] = labels
        task = asyncio.get_running_loop().create_task(work, name=f"remediation:{run.run_id}")
        self._tasks[run.run_id] = task
        task.add_done_callback(lambda _: self._forget(run.run_id))

    def _forget(self, run_id: str) -> None:
        self._tasks.pop(run_id, None)
        self._labels.pop(run_id, None)

    # -- gates -------------------------------------------------------------------------

    def gate_input(self, run: RunRecord, playbook: Playbook) -> GateInput:
        """What the gates see for ``run`` now."""
        now = self._clock()
        history = self.journal.history(playbook.name)
        firing = [c for c in self._conditions() if c.state is ConditionState.FIRING]
        return GateInput(
            now=now,
            run_id=run.run_id,
            playbook=playbook,
            target=run.target,
            disruptive=run.disruptive,
            paused=self.paused(),
            windows=self._config.windows,
            protected=self._protected,
            allowlist=self._config.allowlist,
            condition_firing=bool(self.firing_for(playbook, run.target)),
            firing=len(firing),
            storm_threshold=self._config.storm_threshold,
            history=history,
            target_history=[r for r in history if r.target == run.target],
            active=self.journal.in_states((RunState.RUNNING, RunState.VERIFYING)),
            breaker=self.breaker(playbook, now=now, history=history),
            loop_since=max(self._reset_at(playbook.name), self._tripped_at(playbook.name) or 0.0),
            condition_triggered=run.source == CONDITION_SOURCE,
            approved=self.journal.get(f"approval:{run.run_id}") is not None,
        )

    def _gate(self, run: RunRecord, playbook: Playbook, phase: str) -> bool:
        decisions = evaluate(self.gate_input(run, playbook))
        self.journal.decide(run.run_id, phase, decisions, self._clock())
        refusal = decisions[-1]
        if refusal.allowed:
            return True
        if refusal.gate == "approval":
            self._await_approval(run, playbook, refusal)
        else:
            self._skip(run, playbook, refusal, phase)
        return False

    def _await_approval(self, run: RunRecord, playbook: Playbook, refusal: Decision) -> None:
        now = self._clock()
        deadline = now + playbook.safety.approval_timeout.total_seconds()
        self.journal.put(f"approval_deadline:{run.run_id}", deadline)
        self.journal.transition(
            run.run_id, RunState.AWAITING_APPROVAL, now, gate=refusal.gate, reason=refusal.reason
        )
        self._event("awaiting_approval", run, {"deadline": deadline, "reason": refusal.reason})
        log.warning(
            "run %s (%s on %s) awaits a signed approval until %s",
            run.run_id,
            run.playbook,
            run.target,
            _utc(deadline),
        )
        self.expire_approvals()

    def expire_approvals(self) -> int:
        """Skip every run whose approval deadline has passed, each with a ``skipped`` event.

        Then arm a timer for the next deadline, so a run nobody approves ends on time
        without anyone asking about it; :func:`~remediations.recovery.reconcile` calls
        this at start, which also ends runs whose deadline passed while the agent was
        down. Without a running loop (an engine driven by hand) no timer is armed.

        Returns:
            How many runs were skipped.
        """
        if self._approval_timer is not None:
            self._approval_timer.cancel()
            self._approval_timer = None
        now = self._clock()
        expired, next_deadline = 0, None
        for run in self.journal.in_states((RunState.AWAITING_APPROVAL,)):
            deadline = float(self.journal.get(f"approval_deadline:{run.run_id}") or 0.0)
            if deadline > now:
                next_deadline = min(deadline, next_deadline or deadline)
                continue
            why = f"no approval arrived before its deadline {_utc(deadline)}"
            self.journal.transition(run.run_id, RunState.SKIPPED, now, gate="approval", reason=why)
            self._event("skipped", run, {"phase": "approval", "gate": "approval", "reason": why})
            log.warning("run %s (%s on %s) skipped: %s", run.run_id, run.playbook, run.target, why)
            expired += 1
        if next_deadline is not None:
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to arm
                self._approval_timer = asyncio.get_running_loop().call_later(
                    next_deadline - now, self.expire_approvals
                )
        return expired

    def approve(self, run_id: str, *, by: str) -> RunRecord:
        """Record a signed approval of a waiting run and execute it (gates checked again).

        Raises:
            RemediationRequestError: the run is not waiting for approval, or its deadline
                has passed (the run is then skipped).
        """
        waiting = {r.run_id: r for r in self.journal.in_states((RunState.AWAITING_APPROVAL,))}
        run = waiting.get(run_id)
        if run is None:
            ended = self.journal.describe(run_id)
            if ended is not None and ended["gate"] == "approval":  # expired at its deadline
                raise RemediationRequestError(
                    f"run {run_id} can no longer be approved: {ended['reason']}"
                )
            raise RemediationRequestError(f"run {run_id} is not waiting for an approval")
        playbook = self.library.playbooks.get(run.playbook)
        now = self._clock()
        deadline = float(self.journal.get(f"approval_deadline:{run_id}") or 0.0)
        if playbook is None or now > deadline:
            why = (
                f"the approval deadline passed {now - deadline:.0f}s ago"
                if playbook is not None
                else f"playbook {run.playbook!r} is no longer loaded"
            )
            self.journal.transition(run_id, RunState.SKIPPED, now, gate="approval", reason=why)
            self._event("skipped", run, {"phase": "approval", "gate": "approval", "reason": why})
            raise RemediationRequestError(f"run {run_id} can no longer be approved: {why}")
        self.journal.put(f"approval:{run_id}", {"by": by, "at": now})
        self._event("approved", run, {"by": by})
        self.journal.transition(run_id, RunState.GATED, now)
        labels = self._run_labels(playbook, run)
        self._spawn(run, playbook, labels, self._execute(run, playbook, labels))
        return run

    def _skip(self, run: RunRecord, playbook: Playbook, refusal: Decision, phase: str) -> None:
        now = self._clock()
        self.journal.transition(
            run.run_id, RunState.SKIPPED, now, gate=refusal.gate, reason=refusal.reason
        )
        self._event("skipped", run, {"phase": phase, **refusal.to_json()})
        log.info("run %s (%s on %s) skipped: %s", run.run_id, run.playbook, run.target, refusal)
        if refusal.gate == "loop_guard" and self._tripped_at(playbook.name) is None:
            self.journal.put(f"breaker_trip:{playbook.name}", now)
            self._escalate(run, f"loop guard tripped the breaker: {refusal.reason}")

    def _would_run(self, run: RunRecord, playbook: Playbook, labels: Mapping[str, str]) -> None:
        steps = []
        for step in playbook.steps:
            try:
                params = render_params(step.params, labels=labels, target=run.target)
            except RenderError as err:
                params = {"error": str(err)}
            steps.append(
                {
                    "action": step.action,
                    "params": params,
                    "timeout": step.timeout.total_seconds(),
                    "retries": step.retries,
                }
            )
        names = ", ".join(f"{s['action']} {s['params']}" for s in steps)
        reason = f"observe mode: would run {names}"
        self._fleet_unused(run, playbook)
        self.journal.transition(
            run.run_id, RunState.SKIPPED, self._clock(), gate="mode", reason=reason, would_run=True
        )
        self._event("would_run", run, {"steps": steps, "reason": reason})
        log.info("run %s: %s on %s", run.run_id, reason, run.target)

    # -- execution ---------------------------------------------------------------------

    async def _execute(
        self,
        run: RunRecord,
        playbook: Playbook,
        labels: Mapping[str, str],
        *,
        first_step: int = 0,
        regate: bool = True,
    ) -> None:
        slot: Slot | None = None
        try:
            if regate and not self._gate(run, playbook, "execute"):
                return
            go_on, slot = await self._take_slot(run, playbook, first_step)
            if not go_on:
                return
            dry_run = playbook.mode is Mode.DRY_RUN
            ctx = RunContext(run.run_id, playbook.name, run.target, labels, dry_run)
            if first_step == 0:
                self.journal.transition(run.run_id, RunState.RUNNING, self._clock(), step=0)
                self._event("started", run, {"steps": len(playbook.steps), "dry_run": dry_run})
            for index in range(first_step, len(playbook.steps)):
                self.journal.transition(run.run_id, RunState.RUNNING, self._clock(), step=index)
                outcome = await self._steps.run(
                    ctx, playbook.steps[index], phase="steps", index=index
                )
                if not outcome.ok:
                    await self._fail(run, playbook, ctx, f"step {index} failed: {outcome.summary}")
                    return
            await self._verify(run, playbook, ctx)
        except asyncio.CancelledError:
            if self.rolls_back(run, playbook):
                # It stays running: the next start resumes it or runs its on_failure steps.
                log.warning("run %s stopped mid-run; the next start settles it", run.run_id)
                raise
            # Stopped mid-run: what the current step did is unknown, so it is not resumed.
            self.journal.transition(
                run.run_id,
                RunState.INTERRUPTED,
                self._clock(),
                reason="the agent stopped during the run",
            )
            self._event("interrupted", run, {"reason": "the agent stopped during the run"})
            raise
        finally:
            if slot is not None and self.fleet is not None:
                await self.fleet.release(slot)

    async def _take_slot(
        self, run: RunRecord, playbook: Playbook, first_step: int
    ) -> tuple[bool, Slot | None]:
        """Whether the run goes on, and the fleet slot a disruptive enforce run took."""
        fleet = self.fleet
        if fleet is None or not run.disruptive or playbook.mode is not Mode.ENFORCE:
            self._fleet_unused(run, playbook)
            return True, None

        def waiting(reason: str) -> None:
            self._event("waiting_for_slot", run, {"reason": reason})

        outcome = await fleet.acquire(run.run_id, on_wait=waiting)
        self.journal.decide(run.run_id, "execute", [outcome.decision], self._clock())
        if outcome.slot is not None and not (outcome.waited and first_step == 0):
            return True, outcome.slot
        if outcome.slot is not None:
            # After a wait the host may have changed: every gate is asked again.
            if self._gate(run, playbook, "execute"):
                return True, outcome.slot
            await fleet.release(outcome.slot)
            return False, None
        if first_step:
            self.interrupt(run, f"no fleet slot to resume the run: {outcome.decision.reason}")
        else:
            self._skip(run, playbook, outcome.decision, "execute")
        return False, None

    def _fleet_unused(self, run: RunRecord, playbook: Playbook) -> None:
        """Record why a disruptive run takes no fleet slot (observe or dry_run mode)."""
        if self.fleet is None or not run.disruptive or playbook.mode is Mode.ENFORCE:
            return
        reason = (
            f"{playbook.mode.value} mode: no fleet slot taken; an enforce run would take one "
            f"({self.fleet.describe()})"
        )
        decision = Decision(FLEET_GATE, True, reason)
        self.journal.decide(run.run_id, "execute", [decision], self._clock())

    async def _verify(self, run: RunRecord, playbook: Playbook, ctx: RunContext) -> None:
        within = playbook.verify.condition_resolved_within
        if within is not None and not ctx.dry_run and playbook.trigger.conditions:
            self.journal.transition(run.run_id, RunState.VERIFYING, self._clock())
            loop = asyncio.get_running_loop()
            deadline = loop.time() + within.total_seconds()
            while self.firing_for(playbook, run.target):
                if loop.time() >= deadline:
                    reason = (
                        f"the condition still fires {within.total_seconds():g}s after the steps"
                    )
                    await self._fail(run, playbook, ctx, reason)
                    return
                await asyncio.sleep(_VERIFY_POLL)
        reason = "dry run: every step reported what it would do" if ctx.dry_run else "resolved"
        self.journal.transition(run.run_id, RunState.SUCCEEDED, self._clock(), reason=reason)
        self._event("succeeded", run, {"reason": reason, "dry_run": ctx.dry_run})
        log.info("run %s (%s on %s) succeeded", run.run_id, run.playbook, run.target)

    async def _fail(self, run: RunRecord, playbook: Playbook, ctx: RunContext, reason: str) -> None:
        for index, step in enumerate(playbook.on_failure):
            await self._steps.run(ctx, step, phase="on_failure", index=index)
        before = self.breaker(playbook)
        self.journal.transition(run.run_id, RunState.FAILED, self._clock(), reason=reason)
        self._event("failed", run, {"reason": reason})
        log.warning("run %s (%s on %s) failed: %s", run.run_id, run.playbook, run.target, reason)
        after = self.breaker(playbook)
        if after.state is BreakerState.OPEN and before.state is not BreakerState.OPEN:
            self._escalate(run, f"circuit breaker of {playbook.name} {after.reason}")

    def _escalate(self, run: RunRecord, reason: str) -> None:
        self._event("escalated", run, {"reason": reason})
        log.error("playbook %s escalated: %s", run.playbook, reason)

    # -- state -------------------------------------------------------------------------

    def disruptive(self, playbook: Playbook, target: str, labels: Mapping[str, str]) -> bool:
        """Whether a run of ``playbook`` on ``target`` is disruptive (see :mod:`.steps`)."""
        return playbook_disruptive(self._actions, playbook, target, labels)

    def step_idempotent(self, playbook: Playbook, index: int, target: str) -> bool:
        """Whether step ``index`` of a run on ``target`` may run again (recovery asks)."""
        labels = self._labels_for(playbook, target)
        return step_idempotent(self._actions, playbook, index, target, labels)

    def firing_for(self, playbook: Playbook, target: str) -> list[Condition]:
        """The firing conditions of the playbook's trigger rules that render to ``target``."""
        found = []
        for condition in self._conditions():
            if condition.state is not ConditionState.FIRING:
                continue
            if condition.rule not in playbook.trigger.conditions:
                continue
            with contextlib.suppress(RenderError):
                if playbook.target_for(dict(condition.labels)) == target:
                    found.append(condition)
        return found

    def paused(self) -> str | None:
        """Why remediation is paused (the pause file or the API switch), or None."""
        if self._config.pause_file.exists():
            return f"pause file {self._config.pause_file} exists"
        switch = self.journal.get("pause")
        if switch:
            until = switch.get("until")
            if until is not None and self._clock() >= until:
                return None  # a fleet pause lapses at its command's expiry
            return f"paused by {switch.get('by')}: {switch.get('reason')}"
        return None

    def set_paused(
        self, paused: bool, *, by: str, reason: str = "", until: float | None = None
    ) -> None:
        """Flip the pause switch (persisted, so it survives restarts); ``until`` makes it lapse."""
        value = (
            {"by": by, "reason": reason, "at": self._clock(), "until": until} if paused else None
        )
        self.journal.put("pause", value)
        self._emit(
            _PREFIX + ("paused" if paused else "resumed"), None, {"by": by, "reason": reason}
        )
        log.warning("remediation %s by %s: %s", "paused" if paused else "resumed", by, reason)

    def _reset_at(self, playbook: str) -> float:
        return float(self.journal.get(f"breaker_reset:{playbook}") or 0.0)

    def _tripped_at(self, playbook: str) -> float | None:
        value = self.journal.get(f"breaker_trip:{playbook}")
        return float(value) if value is not None else None

    def breaker(
        self,
        playbook: Playbook,
        *,
        now: float | None = None,
        history: Sequence[RunRecord] | None = None,
    ) -> BreakerStatus:
        """The playbook's circuit breaker now."""
        return breaker_status(
            history if history is not None else self.journal.history(playbook.name),
            playbook.safety.breaker,
            self._clock() if now is None else now,
            reset_at=self._reset_at(playbook.name),
            tripped_at=self._tripped_at(playbook.name),
        )

    def reset_breaker(self, playbook: str, *, by: str) -> None:
        """Close a breaker by hand: earlier failures and loop returns are forgotten."""
        if playbook not in self.library.playbooks:
            raise RemediationRequestError(f"no playbook named {playbook!r}")
        self.journal.put(f"breaker_reset:{playbook}", self._clock())
        self.journal.put(f"breaker_trip:{playbook}", None)
        self._emit(_PREFIX + "breaker_reset", playbook, {"playbook": playbook, "by": by})

    def _event(self, kind: str, run: RunRecord, data: Mapping[str, Any]) -> None:
        payload = {"run": run.run_id, "playbook": run.playbook, "target": run.target, **data}
        self._emit(_PREFIX + kind, run.playbook, payload)

    def resume(self, run: RunRecord, playbook: Playbook, *, first_step: int, regate: bool) -> None:
        """Continue a run found unfinished after a restart (see :mod:`remediations.recovery`)."""
        labels = self._run_labels(playbook, run)
        work = self._execute(run, playbook, labels, first_step=first_step, regate=regate)
        self._spawn(run, playbook, labels, work)

    def interrupt(self, run: RunRecord, reason: str) -> None:
        """End a run found unfinished after a restart that must not continue."""
        self.journal.transition(run.run_id, RunState.INTERRUPTED, self._clock(), reason=reason)
        self._event("interrupted", run, {"reason": reason})
        log.warning(
            "run %s (%s on %s) interrupted: %s", run.run_id, run.playbook, run.target, reason
        )

    def rolls_back(self, run: RunRecord, playbook: Playbook) -> bool:
        """Whether ``run``, abandoned mid-way, runs its ``on_failure`` steps before it ends.

        True when a step was attempted (something may have changed, a node drained) and
        every ``on_failure`` step is idempotent (:func:`.steps.on_failure_idempotent`).
        """
        if not playbook.on_failure or not self.journal.attempts(run.run_id):
            return False
        labels = self._run_labels(playbook, run)
        return on_failure_idempotent(self._actions, playbook, run.target, labels)

    def roll_back(self, run: RunRecord, playbook: Playbook, reason: str) -> None:
        """End a run abandoned mid-way: run its ``on_failure`` steps, then interrupt it."""
        labels = self._run_labels(playbook, run)
        ctx = RunContext(
            run.run_id, playbook.name, run.target, labels, playbook.mode is Mode.DRY_RUN
        )
        self._spawn(run, playbook, labels, self._roll_back(run, playbook, ctx, reason))

    async def _roll_back(
        self, run: RunRecord, playbook: Playbook, ctx: RunContext, reason: str
    ) -> None:
        log.warning("run %s: %s; running its on_failure steps", run.run_id, reason)
        for index, step in enumerate(playbook.on_failure):
            await self._steps.run(ctx, step, phase="on_failure", index=index)
        self.interrupt(run, f"{reason}; its on_failure steps ran")

    def verify_again(self, run: RunRecord, playbook: Playbook) -> None:
        """Resume a run that crashed while verifying: verification only reads."""
        labels = self._run_labels(playbook, run)
        ctx = RunContext(run.run_id, playbook.name, run.target, labels, False)
        self._spawn(run, playbook, labels, self._verify(run, playbook, ctx))

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Runs executing now."""
        return len(self._tasks)

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109  (a bounded wait is the point)
        """Wait up to ``timeout`` seconds for in-flight runs; True if none is left."""
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        return not self._tasks

    async def aclose(self, grace: float) -> None:
        """Stop: in-flight runs get ``grace`` seconds, the rest are interrupted.

        Then the engine leaves the fleet budget: slots still held and the membership
        are revoked in etcd.
        """
        if self._approval_timer is not None:
            self._approval_timer.cancel()
        if not await self.drain(grace):
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=1.0)
        if self.fleet is not None:
            await self.fleet.aclose()


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
