"""Running remediation actions in tests: a step context and services that record."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from agent.config_drain import DrainConfig
from agent.config_kubernetes import KubernetesConfig
from remediations.actions.base import ActionContext
from remediations.actions.processes import ProcessMatch


@dataclass
class RecordingServices:
    """The engine's :class:`~remediations.actions.base.ActionServices`, recording emits."""

    node: str = "node-1"
    protected_pids: frozenset[int] = field(default_factory=lambda: frozenset({1, os.getpid()}))
    systemd_bus: str | None = None
    process_groups: Mapping[str, ProcessMatch] = field(default_factory=dict)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)
    drain: DrainConfig = field(default_factory=DrainConfig)
    emitted: list[tuple[str, str | None, dict[str, Any]]] = field(default_factory=list)

    def emit(self, type: str, subject: str | None, data: Mapping[str, Any]) -> None:
        """Record the event."""
        self.emitted.append((type, subject, dict(data)))


def step(
    params: BaseModel,
    *,
    dry_run: bool = False,
    timeout: float = 60.0,
    target: str = "target-1",
    services: RecordingServices | None = None,
) -> ActionContext:
    """A context for one step of run ``run-1`` of playbook ``pb``."""
    return ActionContext(
        run_id="run-1",
        playbook="pb",
        target=target,
        params=params,
        dry_run=dry_run,
        timeout=timeout,
        services=services or RecordingServices(),
    )
