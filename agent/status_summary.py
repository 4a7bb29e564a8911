"""The node at a glance, as the status page and its live stream show it.

:func:`node_summary` builds one JSON-ready mapping (identity, health, readiness, broker
link, pause state, conditions) with every figure already formatted for people, so the
server-rendered page and the page's script show exactly the same text.
"""

from __future__ import annotations

__all__ = ["NodeSummary", "format_duration", "format_value", "iso_utc", "node_summary"]

import math
from datetime import UTC, datetime
from typing import Any

from agent.model import Condition, ConditionState, Severity
from agent.view import AgentView, RemediationView

NodeSummary = dict[str, Any]
"""The JSON-ready summary (see :func:`node_summary`)."""

MAX_CONDITIONS = 200
"""Conditions shown at most (active ones first)."""

_STATE_ICON = {
    ConditionState.FIRING: "\u2716",  # heavy multiplication x
    ConditionState.PENDING: "\u25d4",  # circle with upper right quadrant
    ConditionState.RESOLVED: "\u2714",  # heavy check mark
    ConditionState.OK: "\u2714",
}
_STATE_ORDER = {
    ConditionState.FIRING: 0,
    ConditionState.PENDING: 1,
    ConditionState.RESOLVED: 2,
    ConditionState.OK: 3,
}


def iso_utc(epoch: float) -> str:
    """Epoch seconds as ISO 8601 in UTC to the second, e.g. ``2026-01-02T03:04:05Z``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_duration(seconds: float) -> str:
    """A duration for people: ``45 s``, ``12 min``, ``3 h 5 min``, ``2 d 4 h``."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def format_value(value: float | None) -> str:
    """A reading for people: four significant digits, or an em dash when there is none."""
    if value is None or not math.isfinite(value):
        return "\u2014"
    return f"{value:.4g}"


def node_summary(
    view: AgentView,
    remediation: RemediationView | None,
    *,
    version: str,
    started: float,
    now: float,
) -> NodeSummary:
    """The node's summary now.

    Args:
        view: the agent's state.
        remediation: the remediation engine, None when remediation is off.
        version: the agent's version.
        started: epoch seconds the agent process started.
        now: epoch seconds now.
    """
    ready, reason = view.readiness()
    conditions = sorted(
        view.conditions(),
        key=lambda c: (_STATE_ORDER[c.state], -c.severity.rank, c.rule, c.labels),
    )
    return {
        "node": view.node_name,
        "version": version,
        "time": iso_utc(now),
        "started": iso_utc(started),
        "uptime": format_duration(now - started),
        "ready": {"ok": ready, "text": "Ready" if ready else f"Not ready: {reason}"},
        "health": _health(conditions, ready=ready),
        "link": _link(view),
        "remediation": _remediation(remediation),
        "conditions": [_condition(c) for c in conditions[:MAX_CONDITIONS]],
        "conditions_hidden": max(0, len(conditions) - MAX_CONDITIONS),
    }


def _health(conditions: list[Condition], *, ready: bool) -> dict[str, str]:
    firing = [c for c in conditions if c.state is ConditionState.FIRING]
    pending = sum(1 for c in conditions if c.state is ConditionState.PENDING)
    worst = max((c.severity.rank for c in firing), default=-1)
    counts = f"{len(firing)} firing, {pending} pending"
    if worst >= Severity.CRITICAL.rank:
        return {"level": "critical", "icon": "\u2716", "text": f"Critical: {counts}"}
    if worst >= Severity.WARNING.rank:
        return {"level": "warning", "icon": "\u25b2", "text": f"Degraded: {counts}"}
    if not ready:
        return {"level": "starting", "icon": "\u2026", "text": f"Starting: {counts}"}
    return {"level": "ok", "icon": "\u2714", "text": f"Healthy: {counts}"}


def _link(view: AgentView) -> dict[str, str | None]:
    status = view.mqtt_status()
    if status is None:
        return {"state": "off", "text": "MQTT not configured", "reason": None}
    text = f"{status.state.value}"
    if status.broker:
        text += f" ({status.broker})"
    text += f", outbox {status.outbox_depth} waiting"
    return {"state": status.state.value, "text": text, "reason": status.reason}


def _remediation(remediation: RemediationView | None) -> dict[str, Any]:
    if remediation is None:
        return {"enabled": False, "paused": False, "text": "Remediation is off on this node"}
    state = remediation.pause_state()
    paused = bool(state.get("paused"))
    reason = state.get("reason")
    text = "Paused" if paused else "Active (not paused)"
    if paused and reason:
        text += f": {reason}"
    return {"enabled": True, "paused": paused, "text": text}


def _condition(condition: Condition) -> dict[str, Any]:
    return {
        "name": condition.rule,
        "labels": dict(condition.labels),
        "state": condition.state.value,
        "icon": _STATE_ICON[condition.state],
        "severity": condition.severity.value,
        "value": format_value(condition.value),
        "since": iso_utc(condition.since),
        "description": condition.description,
    }
