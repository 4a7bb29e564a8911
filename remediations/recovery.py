"""Reconciling the journal at start: runs a crash left unfinished are never repeated blindly.

For each run not in a final state:

* ``requested`` or ``gated``: nothing was done yet. If its condition still fires the
  run goes on, through the execution-time gates like any run; otherwise it is
  interrupted.
* ``running``: if a step attempt was in flight, its effect is unknown. The run resumes
  *at that step* only if the step's action is idempotent, the condition still fires and
  remediation is not paused; a crash between steps resumes at the next step under the
  same conditions. Anything else (a disruptive or non-idempotent step, an ``on_failure``
  step, a resolved condition) is marked interrupted with an event saying why.
* ``verifying``: verification only reads, so it resumes.
* ``awaiting_approval``: still waiting until its deadline; one whose deadline passed
  while the agent was down is skipped with an event.

A ``running`` run that is not resumed but had begun its steps is *abandoned*: when its
playbook's ``on_failure`` steps are all idempotent (``undrain.node``, ``event.escalate``)
they run first, as for a failed run, so a node drained by a crashed run is put back (a
playbook with ``leave_drained: true`` has no undrain there and leaves it for a human).
A crash during those steps runs them again at the next start.
"""

from __future__ import annotations

__all__ = ["reconcile"]

import logging

from remediations.actions.base import Action
from remediations.breaker import RunRecord
from remediations.engine import RemediationEngine
from remediations.model import Playbook, RunState

log = logging.getLogger(__name__)

_UNFINISHED = (RunState.REQUESTED, RunState.GATED, RunState.RUNNING, RunState.VERIFYING)


def reconcile(engine: RemediationEngine, actions: dict[str, type[Action]]) -> int:
    """Settle every unfinished run; returns how many there were."""
    runs = engine.journal.in_states(_UNFINISHED)
    for run in runs:
        playbook = engine.library.playbooks.get(run.playbook)
        if playbook is None:
            engine.interrupt(run, "the agent restarted and the playbook is no longer loaded")
            continue
        _settle(engine, actions, run, playbook)
    if runs:
        log.info("reconciled %d unfinished remediation runs", len(runs))
    engine.expire_approvals()
    return len(runs)


def _settle(
    engine: RemediationEngine,
    actions: dict[str, type[Action]],
    run: RunRecord,
    playbook: Playbook,
) -> None:
    firing = bool(engine.firing_for(playbook, run.target)) or not playbook.trigger.conditions
    if run.state is RunState.VERIFYING:
        engine.verify_again(run, playbook)
        return
    if run.state in (RunState.REQUESTED, RunState.GATED):
        if firing:
            engine.resume(run, playbook, first_step=0, regate=True)
        else:
            engine.interrupt(run, "the agent restarted before the run started; nothing was done")
        return
    attempts = engine.journal.attempts(run.run_id)
    in_flight = [a for a in attempts if a.state == "started"]
    rolls_back = engine.rolls_back(run, playbook)

    def end(reason: str) -> None:
        if rolls_back:
            engine.roll_back(run, playbook, reason)
        else:
            engine.interrupt(run, reason)

    if any(a.phase == "on_failure" for a in attempts):
        end("the agent restarted while the on_failure steps ran")
        return
    done = {a.step for a in attempts if a.phase == "steps" and a.state == "succeeded"}
    if in_flight:
        step = in_flight[-1].step
        same = actions.get(in_flight[-1].action) is not None and (
            playbook.steps[step].action == in_flight[-1].action
            if 0 <= step < len(playbook.steps)
            else False
        )
        if not same or not engine.step_idempotent(playbook, step, run.target):
            end(
                f"the agent restarted during step {step} ({in_flight[-1].action}), which is not "
                "idempotent; it is not repeated"
            )
            return
    else:
        step = max(done, default=-1) + 1
    paused = engine.paused()
    if not firing or paused is not None:
        why = "the condition no longer fires" if not firing else f"remediation is paused ({paused})"
        end(f"the agent restarted during the run and {why}; it is not resumed")
        return
    log.info("run %s resumes at step %d after a restart", run.run_id, step)
    engine.resume(run, playbook, first_step=step, regate=False)
