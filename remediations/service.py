"""The remediation engine as the runtime composes it: built from the settings, read by the API.

:func:`load_library` loads the actions and playbooks a configuration names (``nodemedic
validate`` and the runtime share it). :class:`RemediationService` owns the journal and
engine over the agent's store and serves what the API, the metrics and remote commands
read or switch: runs, the decision record, the pause switch, breakers.
"""

from __future__ import annotations

__all__ = ["RemediationRequestError", "RemediationService", "load_library", "process_matches"]

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from pydantic import ValidationError

from agent.config import AgentSettings, KubernetesConfig, ProcessGroupConfig
from agent.config_drain import DrainConfig
from agent.model import Condition
from agent.store import Store
from remediations.action_catalog import available_actions
from remediations.actions.base import Action
from remediations.actions.processes import ProcessMatch
from remediations.coordination import FleetBudget
from remediations.engine import RemediationEngine, RemediationRequestError
from remediations.execution import Emit
from remediations.journal import Journal
from remediations.library import BUILTIN_DIR, PlaybookLibrary, load_playbooks
from remediations.recovery import reconcile

log = logging.getLogger(__name__)

# The journal key of the newest retained fleet pause applied (its issued_at).
_FLEET_PAUSE_ISSUED = "fleet_pause_issued"


def load_library(settings: AgentSettings) -> tuple[dict[str, type[Action]], PlaybookLibrary]:
    """The actions and validated playbooks of a configuration.

    Raises:
        ActionCatalogError: an action module cannot be used.
        PlaybookError: a playbook is invalid (each issue names its file and field).
    """
    config = settings.remediation
    actions = available_actions(config.action_modules)
    library = load_playbooks(
        config.playbooks_dir,
        actions=actions,
        rules=[rule.name for rule in settings.rules],
        builtin_dir=BUILTIN_DIR if config.builtin_playbooks else None,
    )
    return actions, library


def process_matches(groups: Sequence[ProcessGroupConfig]) -> dict[str, ProcessMatch]:
    """The ``processes`` probe's groups as ``process.signal`` matches them, by name.

    A group the action cannot express (which validation of both models should rule
    out) is left out with an error in the log: ``process.signal`` then refuses it by
    name, and the agent keeps running.
    """
    matches: dict[str, ProcessMatch] = {}
    for group in groups:
        criteria = {
            "comm": group.comm,
            "cmdline": group.cmdline,
            "pidfile": str(group.pidfile) if group.pidfile is not None else None,
            "user": group.user,
            "unit": group.unit,
        }
        try:
            matches[group.name] = ProcessMatch.model_validate(
                {key: value for key, value in criteria.items() if value is not None}
            )
        except ValidationError as err:
            log.error("process group %s cannot be matched by process.signal: %s", group.name, err)
    return matches


@dataclass(slots=True)
class _Services:
    """What actions act through (:class:`remediations.actions.base.ActionServices`)."""

    node: str
    emit_event: Emit
    protected_pids: frozenset[int] = field(default_factory=lambda: frozenset({1, os.getpid()}))
    systemd_bus: str | None = None
    process_groups: Mapping[str, ProcessMatch] = field(default_factory=dict)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)
    drain: DrainConfig = field(default_factory=DrainConfig)

    def emit(self, type: str, subject: str | None, data: Mapping[str, Any]) -> None:
        """Record an event."""
        self.emit_event(type, subject, data)


class RemediationService:
    """The engine over the agent's store, plus the views the API and metrics read.

    Args:
        settings: the agent's settings.
        store: the open store (the journal lives in it).
        conditions: returns the current conditions.
        emit: records an event.
        actions: action classes by name (from :func:`load_library`).
        library: the loaded playbooks.
        clock: epoch seconds.
    """

    def __init__(
        self,
        settings: AgentSettings,
        *,
        store: Store,
        conditions: Callable[[], Sequence[Condition]],
        emit: Emit,
        actions: Mapping[str, type[Action]],
        library: PlaybookLibrary,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._actions = dict(actions)
        budget = settings.remediation.fleet_budget
        fleet = FleetBudget(budget, node=settings.node.name, emit=emit) if budget.enabled else None
        self.engine = RemediationEngine(
            library=library,
            actions=actions,
            journal=Journal(store, max_runs=settings.remediation.max_runs_kept),
            config=settings.remediation,
            conditions=conditions,
            emit=emit,
            services=_Services(
                node=settings.node.name,
                emit_event=emit,
                systemd_bus=settings.probes.units.bus,
                process_groups=process_matches(settings.probes.processes.groups),
                kubernetes=settings.kubernetes,
                drain=settings.remediation.drain,
            ),
            clock=clock,
            fleet=fleet,
        )

    def reconcile(self) -> int:
        """Join the fleet budget and settle runs a crash left unfinished; call once the
        loop runs (the engine's ``aclose`` leaves the budget)."""
        if self.engine.fleet is not None:
            self.engine.fleet.start()
        return reconcile(self.engine, self._actions)

    # API view

    def runs(self, *, limit: int, playbook: str | None = None) -> list[dict[str, Any]]:
        """The newest runs, newest first."""
        return self.engine.journal.recent(limit=limit, playbook=playbook)

    def run(self, run_id: str) -> dict[str, Any] | None:
        """A run's decision record, or None."""
        return self.engine.journal.describe(run_id)

    def pause_state(self) -> dict[str, Any]:
        """Whether remediation is paused and why."""
        reason = self.engine.paused()
        return {"paused": reason is not None, "reason": reason}

    def set_paused(
        self,
        paused: bool,
        *,
        by: str,
        reason: str,
        until: float | None = None,
        fleet_issued_at: int | None = None,
    ) -> dict[str, Any]:
        """Flip the pause switch (``until``: epoch seconds it lapses); returns the new state.

        ``fleet_issued_at`` marks the retained fleet pause applied; it is written after
        the switch, so a crash between the two applies that message again on restart
        rather than never.
        """
        self.engine.set_paused(paused, by=by, reason=reason, until=until)
        if fleet_issued_at is not None:
            self.engine.journal.put(_FLEET_PAUSE_ISSUED, fleet_issued_at)
        return self.pause_state()

    def fleet_pause_issued(self) -> int | None:
        """The ``issued_at`` of the newest retained fleet pause applied on this node."""
        value = self.engine.journal.get(_FLEET_PAUSE_ISSUED)
        return None if value is None else int(value)

    def approve(self, run_id: str, *, by: str) -> None:
        """Approve a run waiting for approval; it executes (gates checked again).

        Raises:
            RemediationRequestError: not waiting, or past its deadline.
        """
        self.engine.approve(run_id, by=by)

    def reset_breaker(self, playbook: str, *, by: str) -> None:
        """Close a playbook's breaker by hand.

        Raises:
            RemediationRequestError: no such playbook.
        """
        self.engine.reset_breaker(playbook, by=by)

    def request(
        self,
        playbook: str,
        target: str | None,
        *,
        source: str,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """Request a run (remote or manual); returns its id.

        Raises:
            RemediationRequestError: unknown playbook, not remote-triggerable, no target.
        """
        return self.engine.request(playbook, target, source=source, labels=labels).run_id

    def status(self) -> dict[str, Any]:
        """Pause state, playbooks with mode and breaker, runs in flight."""
        library = self.engine.library
        return {
            **self.pause_state(),
            "in_flight": self.engine.in_flight,
            "playbooks": {
                name: {
                    "mode": playbook.mode.value,
                    "breaker": self.engine.breaker(playbook).state.value,
                    "source": library.sources.get(name),
                }
                for name, playbook in sorted(library.playbooks.items())
            },
            "dormant": dict(library.dormant),
        }

    # metrics

    METRIC_NAMES = frozenset(
        {
            "nodemedic_remediation_runs_total",
            "nodemedic_remediation_would_runs_total",
            "nodemedic_remediation_breaker_state",
            "nodemedic_remediation_paused",
            "nodemedic_remediation_fleet_slots_held",
            "nodemedic_remediation_fleet_slots_in_use",
            "nodemedic_remediation_fleet_budget",
            "nodemedic_remediation_fleet_acquire_failures_total",
            "nodemedic_remediation_fleet_slots_lost_total",
        }
    )
    """The series :meth:`collect` exports (counters with their ``_total``)."""

    def collect(self) -> Iterator[Metric]:
        """Runs by playbook and outcome, would-run counts, breaker states."""
        runs = CounterMetricFamily(
            "nodemedic_remediation_runs",
            "Remediation runs in the journal by playbook and state (outcome).",
            labels=["playbook", "state"],
        )
        for (playbook, state), count in sorted(self.engine.journal.outcomes().items()):
            runs.add_metric([playbook, state], count)
        yield runs
        would = CounterMetricFamily(
            "nodemedic_remediation_would_runs",
            "Observe-mode runs that passed every gate and were recorded, not executed.",
            labels=["playbook"],
        )
        for playbook, count in sorted(self.engine.journal.would_runs().items()):
            would.add_metric([playbook], count)
        yield would
        breaker = GaugeMetricFamily(
            "nodemedic_remediation_breaker_state",
            "Circuit breaker per playbook: 0 closed, 0.5 half-open, 1 open.",
            labels=["playbook"],
        )
        for name, book in sorted(self.engine.library.playbooks.items()):
            breaker.add_metric([name], self.engine.breaker(book).state.gauge)
        yield breaker
        paused = 1.0 if self.engine.paused() is not None else 0.0
        yield GaugeMetricFamily(
            "nodemedic_remediation_paused", "1 while remediation is paused.", value=paused
        )
        if self.engine.fleet is not None:
            yield from _fleet_families(self.engine.fleet)


def _fleet_families(fleet: FleetBudget) -> Iterator[Metric]:
    """The fleet budget's slots, budget and refusals (only when the budget is enabled)."""
    stats = fleet.stats
    gauges = (
        ("slots_held", "Fleet budget slots this agent holds now.", stats.held),
        ("slots_in_use", "Fleet budget slots held in the group at the last read.", stats.in_use),
        ("budget", "The group's fleet budget (slots) at the last read.", stats.budget),
    )
    for name, text, value in gauges:
        family = GaugeMetricFamily(f"nodemedic_remediation_fleet_{name}", text, labels=["group"])
        family.add_metric([fleet.group], value)
        yield family
    failures = CounterMetricFamily(
        "nodemedic_remediation_fleet_acquire_failures",
        "Disruptive runs refused a fleet slot, by cause (budget_full, etcd_unreachable, "
        "etcd_refused).",
        labels=["group", "cause"],
    )
    for cause in ("budget_full", "etcd_unreachable", "etcd_refused"):
        failures.add_metric([fleet.group, cause], stats.failures[cause])
    yield failures
    lost = CounterMetricFamily(
        "nodemedic_remediation_fleet_slots_lost",
        "Fleet slots whose lease expired while held (etcd unreachable for a lease TTL).",
        labels=["group"],
    )
    lost.add_metric([fleet.group], stats.lost)
    yield lost
