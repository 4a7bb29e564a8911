"""Configuration of the Kubernetes integration: the ``kubernetes`` section.

The agent talks to the Kubernetes API only when this section says so (``enabled: auto``
turns it on inside a pod, where ``KUBERNETES_SERVICE_HOST`` is set, or when a
``kubeconfig`` is given). It then mirrors its conditions onto its Node as NodeConditions,
records remediation runs as Events, and the ``drain.kubernetes`` / ``undrain.kubernetes``
actions cordon, drain and uncordon the node.
"""

from __future__ import annotations

__all__ = [
    "KubernetesConditionsConfig",
    "KubernetesConfig",
    "KubernetesDrainConfig",
    "KubernetesEventsConfig",
]

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from agent.config_types import Duration
from agent.config_types import FrozenModel as _Frozen

_CAMEL = re.compile(r"[A-Z][A-Za-z0-9]*")
_NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_IN_CLUSTER_VAR = "KUBERNETES_SERVICE_HOST"
_NODE_NAME_VAR = "NODE_NAME"


def _auto_or_bool(value: object) -> object:
    if value == "auto" or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "yes", "on", "1"}:
        return True
    if text in {"false", "no", "off", "0"}:
        return False
    raise ValueError(f"{value!r} is not auto, true or false")


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than zero")
    return value


class KubernetesDrainConfig(_Frozen):
    """How ``drain.kubernetes`` drains the node, as ``kubectl drain`` does.

    DaemonSet pods and mirror (static) pods are always left in place: their controller or
    the kubelet would only put them back.
    """

    eviction_timeout: Duration = timedelta(minutes=5)
    """How long evictions are retried and pods awaited before a drain fails (kubectl --timeout)."""
    grace_period: Duration | None = None
    """Grace period each evicted pod gets; default its own terminationGracePeriodSeconds."""
    retry_interval: Duration = timedelta(seconds=5)
    """Pause before asking again to evict a pod its PodDisruptionBudget protects (a 429)."""
    poll_interval: Duration = timedelta(seconds=1)
    """Pause between checks that evicted pods have left the node."""
    delete_emptydir_data: bool = False
    """Evict pods with emptyDir data, which is lost (kubectl --delete-emptydir-data)."""
    evict_unmanaged_pods: bool = False
    """Evict pods no controller recreates (kubectl --force); else refuse to drain."""

    @field_validator("eviction_timeout", "retry_interval", "poll_interval")
    @classmethod
    def _longer_than_zero(cls, value: timedelta) -> timedelta:
        return _positive(value)

    @field_validator("grace_period")
    @classmethod
    def _not_negative(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value < timedelta(0):
            raise ValueError("must not be negative (0 deletes the pods at once)")
        return value


class KubernetesConditionsConfig(_Frozen):
    """The agent's conditions as NodeConditions on its Node (as node-problem-detector sets them).

    Each rule becomes one condition type, the prefix followed by the rule's name in
    CamelCase (``filesystem-almost-full`` -> ``NodemedicFilesystemAlmostFull``), status
    ``True`` while any of its series fires and ``False`` once resolved. A rule that has
    not fired since its type was last on the Node is not shown; a type whose rule is gone
    from the configuration is deleted.
    """

    enabled: bool = True
    """Mirror conditions onto the Node."""
    prefix: str = "Nodemedic"
    """First part of every condition type the agent owns (CamelCase); others are never touched."""
    types: dict[str, str] = Field(default_factory=dict)
    """Rule name -> type suffix (CamelCase) used after the prefix instead of the rule's name."""
    min_interval: Duration = timedelta(seconds=1)
    """At most one status update per this; changes in between are coalesced into the next one."""
    heartbeat: Duration = timedelta(minutes=1)
    """Every condition is written again this often, with a fresh lastHeartbeatTime and value."""

    @field_validator("prefix")
    @classmethod
    def _camel_prefix(cls, value: str) -> str:
        if not _CAMEL.fullmatch(value) or len(value) > 60:
            raise ValueError(
                f"{value!r} is not a CamelCase prefix such as Nodemedic "
                "(a capital letter, then letters and digits, at most 60)"
            )
        return value

    @field_validator("types")
    @classmethod
    def _camel_types(cls, value: Mapping[str, str]) -> dict[str, str]:
        for rule, suffix in value.items():
            if not _CAMEL.fullmatch(suffix):
                raise ValueError(
                    f"types[{rule!r}]: {suffix!r} is not CamelCase such as DiskAlmostFull"
                )
        return dict(value)

    @field_validator("min_interval", "heartbeat")
    @classmethod
    def _longer_than_zero(cls, value: timedelta) -> timedelta:
        return _positive(value)


class KubernetesEventsConfig(_Frozen):
    """Remediation runs as Kubernetes Events on the Node (started, succeeded, failed, skipped)."""

    enabled: bool = True
    """Record remediation runs as Events."""
    namespace: str = Field(default="default", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    """Namespace the Events are created in (the kubelet puts Node events in default)."""
    burst: int = Field(default=25, ge=1, le=1000)
    """Events that may be sent at once before the rate applies."""
    per_minute: float = Field(default=12.0, gt=0, le=6000)
    """Steady rate of Events; beyond it they are dropped and counted."""
    queue: int = Field(default=100, ge=1, le=10_000)
    """Events waiting while the API is unreachable; the oldest are dropped beyond it."""


class KubernetesConfig(_Frozen):
    """The Kubernetes API: NodeConditions, Events and the drain actions."""

    enabled: Annotated[Literal["auto"] | bool, BeforeValidator(_auto_or_bool)] = "auto"
    """auto: on inside a pod (KUBERNETES_SERVICE_HOST set) or with a kubeconfig; true; false."""
    kubeconfig: Path | None = None
    """A kubeconfig file (its current context is used); default the pod's service account."""
    context: str | None = Field(default=None, min_length=1)
    """The kubeconfig context to use instead of its current-context."""
    node_name: str | None = None
    """The Node object's name; default $NODE_NAME, else node.name."""
    request_timeout: Duration = timedelta(seconds=10)
    """Timeout of each API request."""
    retry_max: Duration = timedelta(seconds=60)
    """Longest pause between attempts while the API cannot be reached (backoff from 1s)."""
    drain: KubernetesDrainConfig = Field(default_factory=KubernetesDrainConfig)
    node_conditions: KubernetesConditionsConfig = Field(default_factory=KubernetesConditionsConfig)
    events: KubernetesEventsConfig = Field(default_factory=KubernetesEventsConfig)

    @field_validator("node_name")
    @classmethod
    def _dns_name(cls, value: str | None) -> str | None:
        if value is not None and not _NODE_NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a Kubernetes node name (lower case letters, digits, '-' "
                "and '.', starting and ending with a letter or digit, at most 253)"
            )
        return value

    @field_validator("kubeconfig")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"{str(value)!r} is not an absolute path such as /etc/kubeconfig")
        return value

    @field_validator("request_timeout", "retry_max")
    @classmethod
    def _longer_than_zero(cls, value: timedelta) -> timedelta:
        return _positive(value)

    @model_validator(mode="after")
    def _context_needs_kubeconfig(self) -> KubernetesConfig:
        if self.context is not None and self.kubeconfig is None:
            raise ValueError("context names a context of kubeconfig; set kubeconfig too")
        return self

    def active(self, environ: Mapping[str, str] | None = None) -> bool:
        """Whether the agent talks to Kubernetes: ``enabled``, or with auto, a pod or kubeconfig."""
        if self.enabled != "auto":
            return bool(self.enabled)
        env = os.environ if environ is None else environ
        return self.kubeconfig is not None or bool(env.get(_IN_CLUSTER_VAR))

    def node(self, default: str, environ: Mapping[str, str] | None = None) -> str:
        """The Node's name: ``node_name``, else $NODE_NAME, else ``default`` (node.name)."""
        if self.node_name is not None:
            return self.node_name
        env = os.environ if environ is None else environ
        return env.get(_NODE_NAME_VAR) or default
