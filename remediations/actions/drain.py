"""Draining this node, whatever its load balancer: ``drain.node`` and hooks for the rest.

``drain.node`` / ``undrain.node`` run ``drain.<method>`` / ``undrain.<method>`` with their
default params, where ``method`` is ``remediation.drain.method`` (haproxy, kubernetes,
exec), so built-in playbooks need not know the load balancer. With method ``none``
``drain.node`` refuses at precheck, naming the config key; ``undrain.node`` then has
nothing to undo and succeeds without touching anything.

``drain.exec`` / ``undrain.exec`` run the operator's commands
(``remediation.drain.exec.drain`` / ``.undrain``, or the step's ``argv``) through the
``exec`` machinery: no shell, an environment allowlist plus ``NODEMEDIC_NODE`` and
``NODEMEDIC_RUN``, a timeout that kills the whole process group. They must be safe to run
twice, as every drain action is: a crash mid-run may repeat them, and a failed or
abandoned run runs its ``on_failure`` undrain.
"""

from __future__ import annotations

__all__ = ["ACTIONS", "DrainExec", "DrainExecParams", "DrainNode", "UndrainExec", "UndrainNode"]

import dataclasses
from datetime import timedelta
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.config_types import Duration
from remediations.actions.base import Action, ActionContext, ActionError, ActionResult, NoParams
from remediations.actions.exec import ExecAction, ExecParams
from remediations.actions.fields import absolute_path, params_as, positive

Verb = Literal["drain", "undrain"]


def _delegate(ctx: ActionContext, verb: Verb) -> tuple[Action, ActionContext] | None:
    """The configured method's action and a context with its default params; None for none.

    Raises:
        ActionError: the method's action is not installed.
    """
    method = ctx.services.drain.method
    if method == "none":
        return None
    # The registry imports this module, so it is looked up when a step runs.
    from remediations.actions.registry import ACTIONS

    name = f"{verb}.{method}"
    action = ACTIONS.get(name)
    if action is None:
        raise ActionError(
            f"{verb}.node: remediation.drain.method is {method} but no action {name} is installed"
        )
    return action(), dataclasses.replace(ctx, params=action.Params())


class _NodeAction:
    Params: ClassVar[type[BaseModel]] = NoParams
    idempotent: ClassVar[bool] = True
    verb: ClassVar[Verb]

    async def precheck(self, ctx: ActionContext) -> None:
        """The method's precheck; with method none drain refuses (undrain has nothing to do)."""
        found = _delegate(ctx, self.verb)
        if found is None:
            if self.verb == "drain":
                raise ActionError(
                    "drain.node: no drain method is configured (remediation.drain.method is "
                    "none); set it to haproxy, kubernetes or exec"
                )
            return
        action, inner = found
        await action.precheck(inner)

    async def apply(self, ctx: ActionContext) -> ActionResult:
        """The method's apply (dry run included)."""
        found = _delegate(ctx, self.verb)
        if found is None:
            return ActionResult(ok=True, summary=f"{self.verb}.node: no drain method configured")
        action, inner = found
        result = await action.apply(inner)
        return dataclasses.replace(result, details={"method": action.name, **result.details})

    async def verify(self, ctx: ActionContext) -> ActionResult:
        """The method's verify."""
        found = _delegate(ctx, self.verb)
        if found is None:
            return ActionResult(ok=True, summary=f"{self.verb}.node: nothing to check")
        action, inner = found
        return await action.verify(inner)


class DrainNode(_NodeAction):
    """Runs ``drain.<remediation.drain.method>``."""

    name: ClassVar[str] = "drain.node"
    disruptive: ClassVar[bool] = True
    verb: ClassVar[Verb] = "drain"


class UndrainNode(_NodeAction):
    """Runs ``undrain.<remediation.drain.method>``."""

    name: ClassVar[str] = "undrain.node"
    disruptive: ClassVar[bool] = False
    verb: ClassVar[Verb] = "undrain"


class DrainExecParams(BaseModel):
    """Params of ``drain.exec`` / ``undrain.exec``; unset ones come from the config.

    Attributes:
        argv: the command (absolute program path and arguments), instead of the config's.
        timeout: how long it may run, instead of the config's.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    argv: tuple[str, ...] | None = Field(default=None, min_length=1)
    timeout: Duration | None = None

    @field_validator("argv")
    @classmethod
    def _program_absolute(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            absolute_path(value[0])
        return value

    @field_validator("timeout")
    @classmethod
    def _positive(cls, value: timedelta | None) -> timedelta | None:
        return None if value is None else positive(value)


class _ExecHook:
    Params: ClassVar[type[BaseModel]] = DrainExecParams
    idempotent: ClassVar[bool] = True
    verb: ClassVar[Verb]

    def _exec(self, ctx: ActionContext) -> ActionContext:
        params = params_as(ctx, DrainExecParams)
        config = ctx.services.drain.exec
        argv = params.argv or (config.drain if self.verb == "drain" else config.undrain)
        if not argv:
            raise ActionError(
                f"{self.verb}.exec: no command; set remediation.drain.exec.{self.verb} "
                "or the step's argv"
            )
        run = ExecParams(
            argv=argv,
            timeout=params.timeout or config.timeout,
            env={"NODEMEDIC_NODE": ctx.services.node, "NODEMEDIC_RUN": ctx.run_id},
            disruptive=self.verb == "drain",
            idempotent=True,
        )
        return dataclasses.replace(ctx, params=run)

    async def precheck(self, ctx: ActionContext) -> None:
        """Refuse a missing command, or a program that is not an executable file."""
        await ExecAction().precheck(self._exec(ctx))

    async def apply(self, ctx: ActionContext) -> ActionResult:
        """Run the command; a nonzero exit or a timeout fails the step."""
        result = await ExecAction().apply(self._exec(ctx))
        summary = result.summary.replace("ran ", f"{self.verb}: ran ", 1)
        return dataclasses.replace(result, summary=summary)

    async def verify(self, ctx: ActionContext) -> ActionResult:
        """The exit status was the check."""
        return ActionResult(ok=True, summary=f"{self.verb}.exec: the exit status was its check")


class DrainExec(_ExecHook):
    """Runs the drain command (module docstring)."""

    name: ClassVar[str] = "drain.exec"
    disruptive: ClassVar[bool] = True
    verb: ClassVar[Verb] = "drain"


class UndrainExec(_ExecHook):
    """Runs the undrain command (module docstring)."""

    name: ClassVar[str] = "undrain.exec"
    disruptive: ClassVar[bool] = False
    verb: ClassVar[Verb] = "undrain"


ACTIONS = (DrainExec, DrainNode, UndrainExec, UndrainNode)
