"""Kubernetes actions: ``drain.kubernetes`` and ``undrain.kubernetes`` on the agent's own node.

They behave as ``kubectl drain --ignore-daemonsets`` and ``kubectl uncordon`` do:

* drain cordons the Node (``spec.unschedulable: true``), then asks the Eviction API to
  evict every pod bound to it, all at once, so PodDisruptionBudgets are respected: a pod
  a budget protects is refused with a 429, and asked again every
  ``kubernetes.drain.retry_interval`` until the deadline (``eviction_timeout``, within the
  step's timeout). It then waits until every evicted pod has left the node (gone, or
  replaced by a pod with another uid). DaemonSet pods and mirror pods are left in place;
  pods with emptyDir data or without a controller make it refuse before touching
  anything, unless ``delete_emptydir_data`` / ``evict_unmanaged_pods`` allow them.
  A drain that fails leaves the node cordoned, as kubectl does; a playbook's
  ``on_failure: [undrain.kubernetes]`` uncordons it.
* undrain uncordons the Node.

Both are idempotent: draining a drained node, or uncordoning a schedulable one, changes
nothing and says so. In dry run they only read the Node and its pods and say what they
would do. The Kubernetes client is imported only when an action runs (see
:mod:`agent.kube_client`).
"""

from __future__ import annotations

__all__ = ["ACTIONS", "DrainKubernetesNode", "DrainParams", "UncordonKubernetesNode"]

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from agent.config_kubernetes import KubernetesConfig, KubernetesDrainConfig
from agent.config_types import Duration
from agent.errors import KubernetesError
from remediations.actions.base import ActionContext, ActionError, ActionResult, NoParams
from remediations.actions.fields import params_as

if TYPE_CHECKING:
    from agent.kube_client import KubeApi, NodeFacts, PodFacts

T = TypeVar("T")

_SHOWN = 10
"""Pods named in a summary; the rest are counted."""


class DrainParams(BaseModel):
    """Params of ``drain.kubernetes``; each overrides the ``kubernetes.drain`` setting.

    Attributes:
        eviction_timeout: how long evictions are retried and pods awaited.
        grace_period: grace period given to each evicted pod.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    eviction_timeout: Duration | None = None
    grace_period: Duration | None = None


@dataclass(frozen=True, slots=True)
class DrainPlan:
    """The node's pods sorted as ``kubectl drain --ignore-daemonsets`` sorts them."""

    evict: tuple[PodFacts, ...]
    daemonset: tuple[PodFacts, ...]
    mirror: tuple[PodFacts, ...]
    refused: tuple[str, ...]
    """Why each pod that blocks the drain does: ``ns/name: why; the setting that allows it``."""

    def describe(self) -> str:
        """``evict 2 pods (a/x, a/y); leave 1 DaemonSet pod, 1 mirror pod``."""
        text = f"evict {_count(self.evict, 'pod')}"
        if self.evict:
            text += f" ({_names(self.evict)})"
        left = self.left()
        return text + (f"; leave {left}" if left else "")

    def left(self) -> str:
        """``1 DaemonSet pod, 1 mirror pod``: what a drain leaves in place ("" for none)."""
        return ", ".join(
            _count(pods, f"{kind} pod")
            for pods, kind in ((self.daemonset, "DaemonSet"), (self.mirror, "mirror"))
            if pods
        )


def plan_drain(pods: list[PodFacts], policy: KubernetesDrainConfig) -> DrainPlan:
    """Sort ``pods`` into those to evict, those left in place and those that block the drain."""
    evict: list[PodFacts] = []
    daemonset: list[PodFacts] = []
    mirror: list[PodFacts] = []
    refused: list[str] = []
    for pod in sorted(pods, key=lambda p: p.ref):
        if pod.mirror:
            mirror.append(pod)
        elif pod.controller_kind == "DaemonSet":
            daemonset.append(pod)
        elif pod.finished:
            evict.append(pod)  # nothing runs in it: kubectl deletes finished pods freely
        elif pod.controller_kind is None and not policy.evict_unmanaged_pods:
            refused.append(
                f"{pod.ref}: no controller would recreate it "
                "(kubernetes.drain.evict_unmanaged_pods allows it)"
            )
        elif pod.emptydir and not policy.delete_emptydir_data:
            refused.append(
                f"{pod.ref}: its emptyDir data would be lost "
                "(kubernetes.drain.delete_emptydir_data allows it)"
            )
        else:
            evict.append(pod)
    return DrainPlan(tuple(evict), tuple(daemonset), tuple(mirror), tuple(refused))


class _NodeAction:
    """What both actions share: the connection and the Node's name."""

    name: ClassVar[str]
    disruptive: ClassVar[bool]
    idempotent: ClassVar[bool]
    Params: ClassVar[type[BaseModel]]

    async def _connect(self, ctx: ActionContext) -> KubeApi:
        from agent.kube_client import KubeApi

        try:
            return await KubeApi.connect(_config(ctx))
        except KubernetesError as err:
            raise ActionError(f"{self.name}: {err}") from err

    async def _node(self, api: KubeApi, ctx: ActionContext) -> NodeFacts:
        name = _node_name(ctx)
        try:
            return await api.node(name)
        except KubernetesError as err:
            if err.status == 404:
                raise ActionError(
                    f"{self.name}: node {name} does not exist in Kubernetes ({api.where}); "
                    "set kubernetes.node_name or NODE_NAME to the Node's name"
                ) from err
            raise ActionError(f"{self.name}: {err}") from err

    async def precheck(self, ctx: ActionContext) -> None:
        """Refuse when the API cannot be used or the Node does not exist.

        Raises:
            ActionError: naming the node and why.
        """
        async with await self._connect(ctx) as api:
            await self._node(api, ctx)


class DrainKubernetesNode(_NodeAction):
    """``drain.kubernetes``: cordon the node and evict its pods (see the module docstring)."""

    name = "drain.kubernetes"
    disruptive = True
    idempotent = True
    Params = DrainParams

    async def precheck(self, ctx: ActionContext) -> None:
        """Refuse before anything is touched: no Node, or pods that would block the drain.

        Raises:
            ActionError: naming every pod that blocks it and the setting that allows it.
        """
        async with await self._connect(ctx) as api:
            node = await self._node(api, ctx)
            plan = await self._plan(api, ctx, node.name)
        if plan.refused:
            raise ActionError(
                f"{self.name}: cannot drain node {node.name}: " + "; ".join(plan.refused)
            )

    async def apply(self, ctx: ActionContext) -> ActionResult:
        """Cordon, evict, wait for the pods to leave; in dry run say what would be done.

        Raises:
            ActionError: a pod could not be evicted or did not leave before the deadline
                (naming it and the API's last answer); the node stays cordoned.
        """
        params = params_as(ctx, DrainParams)
        policy = _config(ctx).drain
        loop = asyncio.get_running_loop()
        timeout = (params.eviction_timeout or policy.eviction_timeout).total_seconds()
        deadline = loop.time() + min(timeout, max(0.1, ctx.timeout - min(1.0, ctx.timeout / 10)))
        grace = params.grace_period if params.grace_period is not None else policy.grace_period
        async with await self._connect(ctx) as api:
            node = await self._node(api, ctx)
            plan = await self._plan(api, ctx, node.name)
            details: dict[str, Any] = {
                "node": node.name,
                "was_cordoned": node.unschedulable,
                "evict": [p.ref for p in plan.evict],
                "daemonset_pods": [p.ref for p in plan.daemonset],
                "mirror_pods": [p.ref for p in plan.mirror],
            }
            if plan.refused:
                raise ActionError(
                    f"{self.name}: cannot drain node {node.name}: " + "; ".join(plan.refused)
                )
            cordon = "cordon" if not node.unschedulable else "keep cordoned"
            if ctx.dry_run:
                return ActionResult(
                    True, f"would {cordon} node {node.name} and {plan.describe()}", details
                )
            if not node.unschedulable:
                await self._call(api.set_unschedulable(node.name, True))
            if not plan.evict:
                summary = f"node {node.name} is drained: cordoned, no pods to evict"
                return ActionResult(True, summary + _left(plan), details)
            seconds = None if grace is None else int(grace / timedelta(seconds=1))
            evicted = await self._evict_all(api, plan.evict, seconds, policy, deadline)
            await self._wait_gone(api, evicted, policy, deadline)
        summary = f"drained node {node.name}: cordoned, evicted {_count(plan.evict, 'pod')}"
        return ActionResult(True, f"{summary} ({_names(plan.evict)}){_left(plan)}", details)

    async def verify(self, ctx: ActionContext) -> ActionResult:
        """Check the node is cordoned and no pod that a drain evicts is left on it."""
        async with await self._connect(ctx) as api:
            node = await self._node(api, ctx)
            plan = await self._plan(api, ctx, node.name)
        details = {"node": node.name, "remaining": [p.ref for p in plan.evict]}
        if not node.unschedulable:
            return ActionResult(False, f"node {node.name} is schedulable again", details)
        if plan.evict:
            return ActionResult(False, f"node {node.name} still runs {_names(plan.evict)}", details)
        return ActionResult(True, f"node {node.name} is cordoned and drained", details)

    async def _plan(self, api: KubeApi, ctx: ActionContext, node: str) -> DrainPlan:
        return plan_drain(await self._call(api.pods_on(node)), _config(ctx).drain)

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except KubernetesError as err:
            raise ActionError(f"{self.name}: {err}") from err

    async def _evict_all(
        self,
        api: KubeApi,
        pods: tuple[PodFacts, ...],
        grace: int | None,
        policy: KubernetesDrainConfig,
        deadline: float,
    ) -> list[PodFacts]:
        results = await asyncio.gather(
            *(self._evict_one(api, pod, grace, policy, deadline) for pod in pods)
        )
        failures = [problem for problem in results if problem is not None]
        if failures:
            raise ActionError(f"{self.name}: " + "; ".join(failures) + " (the node stays cordoned)")
        return list(pods)

    async def _evict_one(
        self,
        api: KubeApi,
        pod: PodFacts,
        grace: int | None,
        policy: KubernetesDrainConfig,
        deadline: float,
    ) -> str | None:
        """None once the pod is evicted or gone; else why it could not be, for the message."""
        from agent.kube_client import EvictionOutcome

        loop = asyncio.get_running_loop()
        retry = policy.retry_interval.total_seconds()
        attempts = 0
        while True:
            attempts += 1
            try:
                outcome, said = await api.evict(pod, grace_period=grace)
            except KubernetesError as err:
                return f"pod {pod.ref} could not be evicted: {err}"
            if outcome is not EvictionOutcome.BLOCKED:
                return None
            if loop.time() + retry > deadline:
                return (
                    f"pod {pod.ref} was not evicted before the deadline: {said} "
                    f"({attempts} attempts)"
                )
            await asyncio.sleep(retry)

    async def _wait_gone(
        self, api: KubeApi, pods: list[PodFacts], policy: KubernetesDrainConfig, deadline: float
    ) -> None:
        loop = asyncio.get_running_loop()
        waiting = list(pods)
        while True:
            still: list[PodFacts] = []
            for pod in waiting:
                uid = await self._call(api.pod_uid(pod.namespace, pod.name))
                if uid == pod.uid:
                    still.append(pod)
            if not still:
                return
            if loop.time() + policy.poll_interval.total_seconds() > deadline:
                raise ActionError(
                    f"{self.name}: evicted pods did not leave before the deadline: "
                    f"{_names(still)} (the node stays cordoned)"
                )
            waiting = still
            await asyncio.sleep(policy.poll_interval.total_seconds())


class UncordonKubernetesNode(_NodeAction):
    """``undrain.kubernetes``: make the node schedulable again (``kubectl uncordon``).

    Not disruptive: it gives capacity back and stops nothing, so it can roll back a
    failed drain even where disruptive steps are held.
    """

    name = "undrain.kubernetes"
    disruptive = False
    idempotent = True
    Params = NoParams

    async def apply(self, ctx: ActionContext) -> ActionResult:
        """Uncordon the node unless it is schedulable; in dry run say what would be done.

        Raises:
            ActionError: when the API refuses or fails.
        """
        async with await self._connect(ctx) as api:
            node = await self._node(api, ctx)
            details = {"node": node.name, "was_cordoned": node.unschedulable}
            if not node.unschedulable:
                return ActionResult(True, f"node {node.name} is already schedulable", details)
            if ctx.dry_run:
                return ActionResult(
                    True, f"would uncordon node {node.name} (now cordoned)", details
                )
            try:
                await api.set_unschedulable(node.name, False)
            except KubernetesError as err:
                raise ActionError(f"{self.name}: {err}") from err
        return ActionResult(True, f"uncordoned node {node.name}", details)

    async def verify(self, ctx: ActionContext) -> ActionResult:
        """Check the node is schedulable."""
        async with await self._connect(ctx) as api:
            node = await self._node(api, ctx)
        ok = not node.unschedulable
        summary = f"node {node.name} is " + ("schedulable" if ok else "still cordoned")
        return ActionResult(ok, summary, {"node": node.name})


def _config(ctx: ActionContext) -> KubernetesConfig:
    return ctx.services.kubernetes


def _node_name(ctx: ActionContext) -> str:
    return _config(ctx).node(ctx.services.node)


def _count(pods: tuple[PodFacts, ...] | list[PodFacts], what: str) -> str:
    return f"{len(pods)} {what}{'' if len(pods) == 1 else 's'}"


def _names(pods: tuple[PodFacts, ...] | list[PodFacts]) -> str:
    shown = ", ".join(p.ref for p in pods[:_SHOWN])
    return shown + (f" and {len(pods) - _SHOWN} more" if len(pods) > _SHOWN else "")


def _left(plan: DrainPlan) -> str:
    left = plan.left()
    return f"; left {left} in place" if left else ""


ACTIONS: tuple[type[_NodeAction], ...] = (DrainKubernetesNode, UncordonKubernetesNode)
"""Both Kubernetes actions, for the action registry."""
