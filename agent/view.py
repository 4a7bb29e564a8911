"""What the API and the metrics collector may read of a running agent.

The runtime implements :class:`AgentView`; ``agent.api`` and ``agent.metrics`` depend
only on this protocol, so tests drive them with a small in-memory view.
"""

from __future__ import annotations

__all__ = ["AgentView", "RemediationView"]

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client.metrics_core import Metric

from agent.model import Condition, Event, MqttStatus, ProbeStatus, Sample


class AgentView(Protocol):
    """Read-only view of the agent's state."""

    @property
    def node_name(self) -> str:
        """The node's name."""
        ...

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): reason says what is still missing when not ready."""
        ...

    def latest_samples(self) -> Iterable[Sample]:
        """The last successful sample of every series of every enabled probe."""
        ...

    def probe_statuses(self) -> Sequence[ProbeStatus]:
        """One status per enabled probe."""
        ...

    def conditions(self) -> Sequence[Condition]:
        """Every tracked condition."""
        ...

    def events(self, *, type: str | None, since: int | None, limit: int) -> Sequence[Event]:
        """Stored events, oldest first: after sequence ``since`` or, without it, the newest.

        ``type`` matches exactly, or as a prefix when it ends in ``.`` or ``*``.
        """
        ...

    def mqtt_status(self) -> MqttStatus | None:
        """The MQTT link and its outbox; None when publishing is not configured."""
        ...

    def event_counts(self) -> Mapping[str, int]:
        """Events emitted since start, by type."""
        ...

    def bus_dropped(self) -> Mapping[str, int]:
        """Events dropped per bus subscriber since start."""
        ...

    def loop_lag(self) -> float:
        """Last measured event-loop lag in seconds."""
        ...


class RemediationView(Protocol):
    """What the API reads of the remediation engine (JSON-ready values)."""

    def runs(self, *, limit: int, playbook: str | None = None) -> list[dict[str, Any]]:
        """The newest runs, newest first."""
        ...

    def run(self, run_id: str) -> dict[str, Any] | None:
        """A run's whole decision record, or None."""
        ...

    def pause_state(self) -> dict[str, Any]:
        """``{"paused": bool, "reason": str | None}``."""
        ...

    def status(self) -> dict[str, Any]:
        """Pause state, playbooks with their mode and breaker, runs in flight."""
        ...

    def collect(self) -> Iterator[Metric]:
        """Prometheus families of the remediation engine."""
        ...
