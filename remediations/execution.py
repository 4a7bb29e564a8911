"""Running one step: render its params, precheck, apply and verify under its timeout, retry.

Every attempt is journalled as started *before* the action touches anything and as
finished after, and reported as an ``io.nodemedic.remediation.step`` event. Failures of
any kind (the action refusing, failing, timing out, or raising a bug) end the attempt
with a reason; nothing here raises past the engine.
"""

from __future__ import annotations

__all__ = ["Emit", "RunContext", "StepOutcome", "StepRunner"]

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from remediations.actions.base import Action, ActionContext, ActionError, ActionServices
from remediations.journal import Journal
from remediations.model import RenderError, Step, render_params

log = logging.getLogger(__name__)

Emit = Callable[[str, str | None, Mapping[str, Any]], None]
"""Record an event: (type, subject, data)."""


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """How a step ended after its attempts.

    Attributes:
        ok: the last attempt succeeded.
        summary: what happened, for humans.
        attempts: how many attempts ran.
        details: the action's facts of the last attempt.
    """

    ok: bool
    summary: str
    attempts: int
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunContext:
    """The run a step belongs to."""

    run_id: str
    playbook: str
    target: str
    labels: Mapping[str, str]
    dry_run: bool


class StepRunner:
    """Executes steps for the engine.

    Args:
        actions: action classes by name.
        journal: where attempts are recorded.
        services: what actions act through.
        emit: records events.
        clock: epoch seconds.
    """

    def __init__(
        self,
        *,
        actions: Mapping[str, type[Action]],
        journal: Journal,
        services: ActionServices,
        emit: Emit,
        clock: Callable[[], float],
    ) -> None:
        self._actions = actions
        self._journal = journal
        self._services = services
        self._emit = emit
        self._clock = clock

    def action(self, step: Step) -> type[Action] | None:
        """The class of a step's action, None if it is no longer installed."""
        return self._actions.get(step.action)

    async def run(
        self, run: RunContext, step: Step, *, phase: str, index: int, first_attempt: int = 0
    ) -> StepOutcome:
        """Run ``step`` with its retries; returns the last attempt's outcome."""
        summary = ""
        details: Mapping[str, Any] = {}
        attempts = 0
        for attempt in range(first_attempt, step.retries + 1):
            attempts += 1
            seq = self._journal.step_started(
                run.run_id,
                phase=phase,
                step=index,
                attempt=attempt,
                action=step.action,
                now=self._clock(),
            )
            ok, summary, details = await self._attempt(run, step)
            self._journal.step_finished(
                run.run_id, seq, ok=ok, summary=summary, details=details, now=self._clock()
            )
            self._emit(
                "io.nodemedic.remediation.step",
                run.playbook,
                {
                    "run": run.run_id,
                    "playbook": run.playbook,
                    "target": run.target,
                    "phase": phase,
                    "step": index,
                    "attempt": attempt,
                    "action": step.action,
                    "ok": ok,
                    "dry_run": run.dry_run,
                    "summary": summary,
                    "details": dict(details),
                },
            )
            level = logging.INFO if ok else logging.WARNING
            log.log(level, "run %s %s[%d] %s: %s", run.run_id, phase, index, step.action, summary)
            if ok:
                return StepOutcome(True, summary, attempts, details)
        return StepOutcome(False, summary, attempts, details)

    async def _attempt(  # noqa: PLR0911  (one return per way an attempt can end)
        self, run: RunContext, step: Step
    ) -> tuple[bool, str, Mapping[str, Any]]:
        action_cls = self._actions.get(step.action)
        if action_cls is None:
            return False, f"action {step.action} is not installed", {}
        timeout = step.timeout.total_seconds()
        try:
            rendered = render_params(step.params, labels=run.labels, target=run.target)
            params = action_cls.Params.model_validate(rendered)
        except (RenderError, ValidationError) as err:
            return False, f"params: {err}", {}
        ctx = ActionContext(
            run_id=run.run_id,
            playbook=run.playbook,
            target=run.target,
            params=params,
            dry_run=run.dry_run,
            timeout=timeout,
            services=self._services,
            labels=dict(run.labels),
        )
        action = action_cls()
        try:
            async with asyncio.timeout(timeout):
                await action.precheck(ctx)
                result = await action.apply(ctx)
                if result.ok and not run.dry_run:
                    check = await action.verify(ctx)
                    if not check.ok:
                        return False, f"{result.summary}; verify: {check.summary}", check.details
        except TimeoutError:
            return False, f"{step.action} did not finish within {timeout:g}s", {}
        except ActionError as err:
            return False, str(err), {}
        except Exception as err:  # an action bug must not take the engine down
            log.exception("action %s raised unexpectedly", step.action)
            return False, f"{step.action} raised {type(err).__name__}: {err}", {}
        return result.ok, result.summary, result.details
