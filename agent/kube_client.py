"""The Kubernetes API as the agent uses it; the only module that imports lightkube.

Why lightkube (``nodemedic[kubernetes]``): it is a small, fully typed asyncio client
(httpx2 underneath) with typed models for every resource, subresources such as
``pods/eviction`` and ``nodes/status`` as first-class resources, every patch type
(strategic merge included), in-cluster service-account auth that re-reads a rotated token
on 401, and kubeconfig files. ``kubernetes_asyncio`` is a large generated client (tens of
megabytes, thousands of modules) whose start-up cost every node would pay. The package is
optional and imported only here, only when Kubernetes is configured: hosts without it pay
nothing.

:class:`KubeApi` answers in this module's own small value types (:class:`NodeFacts`,
:class:`PodFacts`), so the drain logic and the status mirror do not depend on the
client's models, and translates every failure into :class:`~agent.errors.KubernetesError`.
"""

from __future__ import annotations

__all__ = [
    "EvictionOutcome",
    "KubeApi",
    "NodeConditionFacts",
    "NodeFacts",
    "PodFacts",
    "missing_client",
]

import asyncio
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, cast

from agent.config_kubernetes import KubernetesConfig
from agent.errors import KubernetesError

if TYPE_CHECKING:
    from lightkube import AsyncClient

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
"""The kubelet marks the API's copy of a static pod with this annotation."""

_INSTALL_HINT = "install it with: pip install 'nodemedic[kubernetes]'"


def missing_client() -> str | None:
    """Why the Kubernetes client cannot be used, or None when lightkube is installed."""
    try:
        import lightkube  # noqa: F401  (only asked where Kubernetes is configured)
    except ImportError:
        return f"the lightkube package is not installed; {_INSTALL_HINT}"
    return None


@dataclass(frozen=True, slots=True)
class NodeConditionFacts:
    """One NodeCondition as the API server holds it."""

    type: str
    status: str
    reason: str | None
    message: str | None
    last_transition: str | None
    """RFC 3339, as the server wrote it."""


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What the agent needs of its Node."""

    name: str
    unschedulable: bool
    conditions: Mapping[str, NodeConditionFacts] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PodFacts:
    """One pod on the node, as ``kubectl drain`` classifies it."""

    namespace: str
    name: str
    uid: str
    controller_kind: str | None
    """Kind of the owner reference with ``controller: true`` (ReplicaSet, DaemonSet...)."""
    mirror: bool
    """A static pod's mirror: the kubelet owns it, the API cannot evict it."""
    emptydir: bool
    """Has an emptyDir volume, whose data an eviction destroys."""
    finished: bool
    """In phase Succeeded or Failed: evicting it interrupts nothing."""

    @property
    def ref(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"


class EvictionOutcome(enum.Enum):
    """What the API server said to one eviction."""

    EVICTED = "evicted"
    """201: the pod is being deleted."""
    GONE = "gone"
    """404: the pod no longer exists."""
    BLOCKED = "blocked"
    """429: a PodDisruptionBudget does not allow it now."""


class KubeApi:
    """A connection to the API server; use ``async with KubeApi.connect(config) as api``.

    Args:
        client: the lightkube client (tests may pass one made over their own transport).
        where: where the configuration came from, for messages.
    """

    def __init__(self, client: AsyncClient, *, where: str) -> None:
        self._client = client
        self.where = where

    @classmethod
    async def connect(cls, config: KubernetesConfig) -> KubeApi:
        """A client for ``config``: its kubeconfig, else the pod's service account.

        Raises:
            KubernetesError: lightkube is missing, or the configuration cannot be loaded
                (naming the file and what is wrong).
        """
        missing = missing_client()
        if missing is not None:
            raise KubernetesError(f"kubernetes: {missing}")
        return await asyncio.to_thread(_connect, config)

    async def __aenter__(self) -> Self:
        """The API itself."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the connections."""
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._client.aclose()

    async def node(self, name: str) -> NodeFacts:
        """Read the Node ``name``.

        Raises:
            KubernetesError: it does not exist (status 404) or the API failed.
        """
        from lightkube.resources.core_v1 import Node

        async with _Translated(f"get node {name}"):
            node = await self._client.get(Node, name)
        conditions = {
            c.type: NodeConditionFacts(
                type=c.type,
                status=c.status,
                reason=c.reason,
                message=c.message,
                last_transition=_rfc3339(c.lastTransitionTime),
            )
            for c in (node.status.conditions or [] if node.status is not None else [])
        }
        unschedulable = bool(node.spec.unschedulable) if node.spec is not None else False
        return NodeFacts(name=name, unschedulable=unschedulable, conditions=conditions)

    async def set_unschedulable(self, name: str, unschedulable: bool) -> None:
        """Cordon (True) or uncordon (False) the node, with the patch ``kubectl`` sends.

        Raises:
            KubernetesError: when the API refuses or fails.
        """
        from lightkube.resources.core_v1 import Node
        from lightkube.types import PatchType

        # kubectl's two-way strategic merge patch: uncordoning removes the field.
        patch = {"spec": {"unschedulable": True if unschedulable else None}}
        verb = "cordon" if unschedulable else "uncordon"
        async with _Translated(f"{verb} node {name}"):
            await self._client.patch(Node, name, patch, patch_type=PatchType.STRATEGIC)

    async def patch_node_status(self, name: str, patch: Mapping[str, Any]) -> None:
        """Apply a strategic merge patch to ``nodes/<name>/status``.

        Raises:
            KubernetesError: when the API refuses or fails.
        """
        from lightkube.resources.core_v1 import Node
        from lightkube.types import PatchType

        async with _Translated(f"patch the status of node {name}"):
            await self._client.patch(Node.Status, name, dict(patch), patch_type=PatchType.STRATEGIC)

    async def pods_on(self, node: str) -> list[PodFacts]:
        """Every pod bound to ``node``, in every namespace.

        Raises:
            KubernetesError: when the API fails.
        """
        from lightkube.resources.core_v1 import Pod

        async with _Translated(f"list the pods on node {node}"):
            listing = self._client.list(Pod, namespace="*", fields={"spec.nodeName": node})
            return [_pod_facts(pod) async for pod in listing]

    async def pod_uid(self, namespace: str, name: str) -> str | None:
        """The uid of the pod now named ``namespace/name``, None when there is none.

        Raises:
            KubernetesError: when the API fails.
        """
        from lightkube.resources.core_v1 import Pod

        try:
            async with _Translated(f"get pod {namespace}/{name}"):
                pod = await self._client.get(Pod, name, namespace=namespace)
        except KubernetesError as err:
            if err.status == 404:
                return None
            raise
        return pod.metadata.uid if pod.metadata is not None else None

    async def evict(
        self, pod: PodFacts, *, grace_period: int | None
    ) -> tuple[EvictionOutcome, str]:
        """Ask the Eviction API to evict ``pod``; returns the outcome and the server's message.

        Raises:
            KubernetesError: any answer but 201, 404 and 429 (e.g. 500 when several
                PodDisruptionBudgets select the pod).
        """
        from lightkube.models.meta_v1 import DeleteOptions, ObjectMeta, Preconditions
        from lightkube.resources.core_v1 import PodEviction

        options = DeleteOptions(
            gracePeriodSeconds=grace_period, preconditions=Preconditions(uid=pod.uid)
        )
        eviction = PodEviction(
            metadata=ObjectMeta(name=pod.name, namespace=pod.namespace), deleteOptions=options
        )
        try:
            async with _Translated(f"evict pod {pod.ref}"):
                await self._client.create(eviction, pod.name, namespace=pod.namespace)
        except KubernetesError as err:
            said = _server_message(err)
            if err.status == 404:
                return EvictionOutcome.GONE, said
            if err.status == 429:
                return EvictionOutcome.BLOCKED, said
            raise
        return EvictionOutcome.EVICTED, "evicted"

    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        """Create a core/v1 Event from its JSON ``body``.

        Raises:
            KubernetesError: when the API refuses or fails.
        """
        from lightkube.resources.core_v1 import Event

        meta = {**body.get("metadata", {}), "namespace": namespace}
        event = cast(Event, Event.from_dict({**body, "metadata": meta}))
        async with _Translated("create an event"):
            await self._client.create(event)


def _connect(config: KubernetesConfig) -> KubeApi:
    import httpx2
    import yaml
    from lightkube import AsyncClient, ConfigError, KubeConfig

    timeout = httpx2.Timeout(config.request_timeout.total_seconds())
    try:
        if config.kubeconfig is not None:
            where = f"kubeconfig {config.kubeconfig}"
            single = KubeConfig.from_file(config.kubeconfig).get(config.context)
        else:
            where = "the pod's service account"
            single = KubeConfig.from_service_account().get()
        client = AsyncClient(single, timeout=timeout, field_manager="nodemedic")
    except (
        ConfigError,
        OSError,
        KeyError,
        ValueError,
        TypeError,
        AssertionError,
        yaml.YAMLError,
    ) as err:
        # lightkube reports a missing key of a malformed file as a bare KeyError.
        detail = f"missing key {err}" if isinstance(err, KeyError) else str(err) or repr(err)
        detail = " ".join(detail.split())  # a YAML error spans lines
        raise KubernetesError(f"kubernetes: cannot use {where}: {detail}") from err
    return KubeApi(client, where=where)


class _Translated:
    """Translate the client's errors into KubernetesError naming what was being done."""

    def __init__(self, doing: str) -> None:
        self._doing = doing

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or not isinstance(exc, Exception):
            return
        import httpx2
        from lightkube import ApiError, ConfigError

        if isinstance(exc, ApiError):
            code = exc.status.code or exc.response.status_code
            message = exc.status.message or exc.response.reason_phrase
            raise KubernetesError(f"{self._doing}: {code} {message}", status=code) from exc
        if isinstance(exc, httpx2.HTTPStatusError):  # an answer that is not a Status
            code = exc.response.status_code
            raise KubernetesError(
                f"{self._doing}: {code} {exc.response.reason_phrase}", status=code
            ) from exc
        if isinstance(exc, httpx2.HTTPError | ConfigError | OSError):
            detail = str(exc) or type(exc).__name__
            raise KubernetesError(f"{self._doing}: {detail}") from exc


def _server_message(err: KubernetesError) -> str:
    from lightkube import ApiError

    cause = err.__cause__
    if isinstance(cause, ApiError) and cause.status.message:
        return cause.status.message
    return str(err)


def _rfc3339(value: object) -> str | None:
    if value is None:
        return None
    isoformat = getattr(value, "isoformat", None)
    if isoformat is None:
        return str(value)
    text: str = isoformat()
    return text.replace("+00:00", "Z")


def _pod_facts(pod: Any) -> PodFacts:
    meta, spec, status = pod.metadata, pod.spec, pod.status
    owners: Sequence[Any] = (meta.ownerReferences or []) if meta is not None else []
    controller = next((o.kind for o in owners if o.controller), None)
    annotations: Mapping[str, str] = (meta.annotations or {}) if meta is not None else {}
    volumes: Sequence[Any] = (spec.volumes or []) if spec is not None else []
    phase = status.phase if status is not None else None
    return PodFacts(
        namespace=meta.namespace or "default",
        name=meta.name,
        uid=meta.uid or "",
        controller_kind=controller,
        mirror=MIRROR_ANNOTATION in annotations,
        emptydir=any(v.emptyDir is not None for v in volumes),
        finished=phase in {"Succeeded", "Failed"},
    )
