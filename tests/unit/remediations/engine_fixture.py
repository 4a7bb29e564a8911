"""An engine over a real SQLite store, a settable clock and the recording test actions."""

from __future__ import annotations

__all__ = ["EngineRig", "firing", "playbook"]

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import KubernetesConfig, RemediationConfig
from agent.config_drain import DrainConfig
from agent.model import Condition, ConditionState, Event, Severity, labelset
from agent.store import Store
from remediations.actions.base import Action
from remediations.actions.processes import ProcessMatch
from remediations.coordination import FleetBudget
from remediations.engine import RemediationEngine
from remediations.journal import Journal
from remediations.library import PlaybookLibrary
from remediations.model import Playbook
from remediations.recovery import reconcile
from tests import remediation_actions

T0 = 1_700_000_000.0


def playbook(name: str = "fix-disk", **overrides: Any) -> Playbook:
    """A playbook over rule filesystem-full targeting the mountpoint."""
    data: dict[str, Any] = {
        "name": name,
        "mode": "enforce",
        "trigger": {"conditions": ["filesystem-full"], "remote": True},
        "target": "{labels.mountpoint}",
        "steps": [{"action": "test.record", "params": {"log": "/dev/null"}}],
    }
    data.update(overrides)
    return Playbook.model_validate(data)


def firing(target: str, rule: str = "filesystem-full") -> Condition:
    """A firing condition of ``rule`` on mountpoint ``target``."""
    return Condition(
        rule, labelset(mountpoint=target), ConditionState.FIRING, Severity.CRITICAL, 1.0, T0
    )


@dataclass
class _Services:
    node: str = "node-a"
    protected_pids: frozenset[int] = frozenset({1})
    systemd_bus: str | None = None
    process_groups: Mapping[str, ProcessMatch] = field(default_factory=dict)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)
    drain: DrainConfig = field(default_factory=DrainConfig)
    emitted: list[tuple[str, str | None, Mapping[str, Any]]] = field(default_factory=list)

    def emit(self, type: str, subject: str | None, data: Mapping[str, Any]) -> None:
        self.emitted.append((type, subject, dict(data)))


class EngineRig:
    """A store in ``directory``, a clock, conditions and the engine; :meth:`restart` reopens."""

    def __init__(
        self,
        directory: Path,
        playbooks: list[Playbook],
        *,
        actions: Mapping[str, type[Action]] = remediation_actions.ACTIONS,
        fleet: FleetBudget | None = None,
        **config: Any,
    ) -> None:
        self.fleet = fleet
        self.directory = directory
        self.actions = dict(actions)
        self.now = T0
        self.conditions: list[Condition] = []
        self.events: list[tuple[str, Mapping[str, Any]]] = []
        self.playbooks = playbooks
        self.config = RemediationConfig(pause_file=directory / "pause", **config)
        self.services = _Services()
        self.store = Store.open(directory / "state.db")
        self.engine = self._engine()

    def _engine(self) -> RemediationEngine:
        library = PlaybookLibrary(playbooks={p.name: p for p in self.playbooks})
        return RemediationEngine(
            library=library,
            actions=self.actions,
            journal=Journal(self.store),
            config=self.config,
            conditions=lambda: self.conditions,
            emit=lambda t, s, d: self.events.append((t, d)),
            services=self.services,
            clock=lambda: self.now,
            fleet=self.fleet,
        )

    def fire(self, target: str, rule: str = "filesystem-full") -> None:
        """The condition goes to firing: the bus event reaches the engine."""
        self.conditions = [c for c in self.conditions if dict(c.labels)["mountpoint"] != target]
        self.conditions.append(firing(target, rule))
        event = Event(
            "x", "nodemedic://node-a", "io.nodemedic.condition.firing", self.now, 1, rule,
            {"rule": rule, "labels": {"mountpoint": target}},
        )  # fmt: skip
        self.engine.on_event(event)

    def resolve(self, target: str) -> None:
        """The condition on ``target`` resolves."""
        self.conditions = [c for c in self.conditions if dict(c.labels)["mountpoint"] != target]

    def kinds(self) -> list[str]:
        """The remediation event kinds emitted so far."""
        return [t.removeprefix("io.nodemedic.remediation.") for t, _ in self.events]

    def restart(self) -> None:
        """Like a SIGKILL: the old engine's tasks never run again; a new one reconciles."""
        self.store.close()
        self.store = Store.open(self.directory / "state.db")
        self.engine = self._engine()
        reconcile(self.engine, self.actions)

    async def settle(self) -> None:
        """Let started tasks run until they block."""
        for _ in range(5):
            await asyncio.sleep(0)
