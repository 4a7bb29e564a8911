"""The action contract: what a playbook step runs, and what it reports.

An :class:`Action` is one kind of step (``systemd.restart_unit``, ``disk.cleanup``...).
The engine validates a step's ``params`` at playbook load with :attr:`Action.Params`,
then for each run calls :meth:`Action.precheck`, :meth:`Action.apply` and
:meth:`Action.verify` under the step's timeout. Every action honours ``ctx.dry_run``:
``apply`` then changes nothing and its result says exactly what it would have done.
"""

from __future__ import annotations

__all__ = [
    "Action",
    "ActionContext",
    "ActionError",
    "ActionResult",
    "ActionServices",
    "NoParams",
]

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from agent.errors import AgentError

if TYPE_CHECKING:  # processes.py imports this module through fields.py
    from agent.config_drain import DrainConfig
    from agent.config_kubernetes import KubernetesConfig
    from remediations.actions.processes import ProcessMatch


class ActionError(AgentError):
    """Raised when an action refuses (precheck), fails (apply) or finds it did not work."""


class NoParams(BaseModel):
    """Params of an action that takes none."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What a step did, or in dry run what it would have done.

    Attributes:
        ok: the step achieved its effect (or, in dry run, could have).
        summary: one line for humans, e.g. ``restarted nginx.service: active/running``
            or in dry run ``would restart nginx.service (now failed/failed)``.
        details: JSON-able facts for the journal and the event (files deleted, PIDs
            signalled, the unit's state after the job).
    """

    ok: bool
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)


class ActionServices(Protocol):
    """What the engine lends actions: the boundaries they act through.

    Each is a constructor argument of the engine, so tests point them at real
    services (the nspawn systemd's bus) or record what was asked.
    """

    node: str
    """This node's name."""

    protected_pids: frozenset[int]
    """PIDs never signalled: 1 and the agent itself."""

    systemd_bus: str | None
    """The D-Bus address systemd actions use; None for the system bus."""

    process_groups: Mapping[str, ProcessMatch]
    """The ``processes`` probe's groups by name, as ``process.signal`` matches them."""

    kubernetes: KubernetesConfig
    """The ``kubernetes`` section: the API, the Node's name and the drain policy."""
    drain: DrainConfig
    """``remediation.drain``: how ``drain.node`` takes this node out of service."""

    def emit(self, type: str, subject: str | None, data: Mapping[str, Any]) -> None:
        """Record an event (``event.escalate`` uses it)."""
        ...


@dataclass(frozen=True, slots=True)
class ActionContext:
    """One step of one run, as the action sees it.

    Attributes:
        run_id: the run's journal id.
        playbook: the playbook's name.
        target: the run's rendered target (a unit, a mountpoint, a process group).
        params: the step's params, rendered and validated (an instance of the
            action's ``Params`` model).
        dry_run: change nothing; report what would be done.
        timeout: seconds the whole step may take; the engine also enforces it.
        services: the boundaries the action acts through.
        labels: the triggering condition's labels (empty for a remote trigger).
    """

    run_id: str
    playbook: str
    target: str
    params: BaseModel
    dry_run: bool
    timeout: float
    services: ActionServices
    labels: Mapping[str, str] = field(default_factory=dict)


class Action(Protocol):
    """One kind of step.

    Attributes:
        name: the name playbooks use, e.g. ``systemd.restart_unit``.
        disruptive: it can interrupt a workload (a restart, a kill, a drain); such
            steps pass the concurrency, budget and storm gates and are never repeated
            blindly after a crash.
        idempotent: running it twice has the effect of running it once, so a run
            interrupted during this step may resume by running it again.
        Params: the pydantic model (``extra="forbid"``, frozen) its params must match.
    """

    name: ClassVar[str]
    disruptive: ClassVar[bool]
    idempotent: ClassVar[bool]
    Params: ClassVar[type[BaseModel]]

    async def precheck(self, ctx: ActionContext) -> None:
        """Refuse before anything is touched (a protected PID, a unit that does not exist).

        Raises:
            ActionError: naming why the step must not run.
        """
        ...

    async def apply(self, ctx: ActionContext) -> ActionResult:
        """Do it, or with ``ctx.dry_run`` say exactly what would be done.

        Raises:
            ActionError: when it fails; the message says what happened.
        """
        ...

    async def verify(self, ctx: ActionContext) -> ActionResult:
        """Check the effect took (the unit is active, the free space reached its target)."""
        ...
