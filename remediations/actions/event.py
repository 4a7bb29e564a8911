"""``event.escalate``: tell humans a run needs them (an ``escalated`` event).

Typically an ``on_failure`` step. The event names the run, the playbook, the target and
the node, carries the step's message and the triggering condition's labels, and goes
out through ``ActionServices.emit`` like every other event (outbox, MQTT, history).
"""

from __future__ import annotations

__all__ = ["ACTIONS", "ESCALATED", "EscalateAction", "EscalateParams"]

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from remediations.actions.base import ActionContext, ActionResult
from remediations.actions.fields import params_as

ESCALATED = "io.nodemedic.remediation.escalated"
"""The event type ``event.escalate`` emits."""


class EscalateParams(BaseModel):
    """Params of ``event.escalate``.

    Attributes:
        message: what a human should know or do.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    message: str = Field(default="remediation needs a human", min_length=1, max_length=2000)


class EscalateAction:
    """Emits :data:`ESCALATED` for the run (module docstring)."""

    name: ClassVar[str] = "event.escalate"
    disruptive: ClassVar[bool] = False
    idempotent: ClassVar[bool] = True
    Params: ClassVar[type[BaseModel]] = EscalateParams

    async def precheck(self, ctx: ActionContext) -> None:
        """Nothing can forbid telling a human."""

    async def apply(self, ctx: ActionContext) -> ActionResult:
        """Emit the event (in dry run, say what it would carry)."""
        params = params_as(ctx, EscalateParams)
        data = {
            "run": ctx.run_id,
            "playbook": ctx.playbook,
            "target": ctx.target,
            "node": ctx.services.node,
            "message": params.message,
            "labels": dict(ctx.labels),
        }
        if ctx.dry_run:
            return ActionResult(
                ok=True,
                summary=f"would emit {ESCALATED} for {ctx.target}: {params.message}",
                details=data,
            )
        ctx.services.emit(ESCALATED, ctx.target, data)
        return ActionResult(
            ok=True, summary=f"escalated {ctx.target}: {params.message}", details=data
        )

    async def verify(self, ctx: ActionContext) -> ActionResult:
        """An emitted event is recorded by the bus; nothing further to check."""
        return ActionResult(ok=True, summary="event.escalate: the event was recorded")


ACTIONS = (EscalateAction,)
