"""How ``nodemedic status`` shows one node: identity, readiness, conditions, runs, events.

Every state is a word (``FIRING``, ``NOT READY``, ``PAUSED``, ``DISCONNECTED``); colour
only repeats it. Times carry their zone.
"""

from __future__ import annotations

__all__ = ["render_status"]

import json
import math
from datetime import tzinfo
from typing import Any, Final

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from agent.node_status import NodeStatus
from agent.terminal import emit, format_age, format_time, parse_time, styled, table, when

_DATA_WIDTH: Final = 60
_EVENT_PREFIX: Final = "io.nodemedic."
_RUN_OUTCOMES: Final = {
    "succeeded": "good",
    "failed": "bad",
    "interrupted": "bad",
    "skipped": "warn",
    "awaiting_approval": "warn",
}


def render_status(status: NodeStatus, out: Console, *, tz: tzinfo | None = None) -> None:
    """Print ``status`` on ``out``; times in ``tz`` (default: the local zone)."""
    now = status.read_at
    firing, pending = status.count("firing"), status.count("pending")
    parts: list[RenderableType] = [
        _summary(status, now, tz),
        "",
        Text(f"CONDITIONS: {firing} firing, {pending} pending", style="bold"),
        _conditions(status, now, tz)
        if status.conditions
        else styled("  none: every condition is ok", "good"),
    ]
    if status.remediation is not None:
        parts += ["", _heading("RECENT RUNS", "newest first", status.runs)]
        if status.runs:
            parts.append(_runs(status, now, tz))
    parts += ["", _heading("RECENT EVENTS", "oldest first", status.events)]
    if status.events:
        parts.append(_events(status, now, tz))
    emit(out, *parts)


def _heading(title: str, order: str, items: tuple[dict[str, Any], ...]) -> Text:
    return Text(f"{title} ({order})" if items else f"{title}: none", style="bold")


def _summary(status: NodeStatus, now: float, tz: tzinfo | None) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_row("NODE", status.node)
    agent = f"nodemedic {status.version or '(version unknown)'}"
    if status.started is not None:
        agent += (
            f", up {format_age(now - status.started)} (since {format_time(status.started, tz)})"
        )
    grid.add_row("AGENT", agent)
    grid.add_row("API", status.api)
    grid.add_row("READ AT", format_time(now, tz))
    if status.ready:
        grid.add_row("READY", styled("ready", "good"))
    else:
        grid.add_row(
            "READY", styled(f"NOT READY: {status.ready_reason or 'no reason given'}", "bad")
        )
    grid.add_row("BROKER", _broker(status.mqtt))
    if status.remediation is not None:
        grid.add_row("REMEDIATION", _remediation(status.remediation))
    else:
        grid.add_row("REMEDIATION", styled("not enabled on this agent", "dim"))
    return grid


def _broker(mqtt: dict[str, Any] | None) -> Text:
    if mqtt is None:
        return styled("not configured (events kept in the local history)", "dim")
    state = str(mqtt.get("state", "unknown"))
    broker = mqtt.get("broker") or "?"
    found = mqtt.get("outbox")
    outbox: dict[str, Any] = found if isinstance(found, dict) else {}
    depth = outbox.get("depth", 0)
    waiting = f"outbox {depth} event{'s' * (depth != 1)}"
    oldest = outbox.get("oldest_age_seconds")
    if isinstance(oldest, int | float) and depth:
        waiting += f", oldest {format_age(oldest)}"
    if outbox.get("shed"):
        waiting += f", {outbox['shed']} SHED"
    if state == "connected":
        return styled(f"connected to {broker} ({waiting})", "good")
    reason = mqtt.get("reason") or "no reason given"
    return styled(f"{state.upper()}: {broker}: {reason} ({waiting})", "bad")


def _remediation(remediation: dict[str, Any]) -> Text:
    in_flight = remediation.get("in_flight", 0)
    if remediation.get("paused"):
        reason = remediation.get("reason") or "no reason given"
        return styled(f"PAUSED: {reason} ({in_flight} in flight)", "warn")
    return styled(f"active, {in_flight} run{'s' * (in_flight != 1)} in flight", "good")


def _conditions(status: NodeStatus, now: float, tz: tzinfo | None) -> Table:
    grid = table("STATE", "SEVERITY", "CONDITION", "SERIES", "VALUE", "SINCE")
    for condition in status.conditions:
        state = str(condition.get("state", "?"))
        severity = str(condition.get("severity", "?"))
        labels = condition.get("labels")
        series = (
            ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
            if isinstance(labels, dict) and labels
            else "-"
        )
        grid.add_row(
            styled(state.upper() if state == "firing" else state, state),
            styled(severity, severity),
            str(condition.get("name", "?")),
            series,
            _number(condition.get("value")),
            when(parse_time(condition.get("since")), now, tz),
        )
    return grid


def _runs(status: NodeStatus, now: float, tz: tzinfo | None) -> Table:
    grid = table("RUN", "PLAYBOOK", "TARGET", "OUTCOME", "REQUESTED", "WHY")
    for run in status.runs:
        state = str(run.get("state", "?"))
        why = run.get("reason") or ""
        if run.get("gate") and state == "skipped":
            why = f"{run['gate']}: {why}"
        if run.get("would_run"):
            why = f"would run (observe mode) {why}".rstrip()
        grid.add_row(
            str(run.get("id", "?")),
            str(run.get("playbook", "?")),
            str(run.get("target") or "-"),
            styled(state, _RUN_OUTCOMES.get(state)),
            when(parse_time(run.get("requested")), now, tz),
            _cut(str(why)) or "-",
        )
    return grid


def _events(status: NodeStatus, now: float, tz: tzinfo | None) -> Table:
    grid = table("TIME", "#", "TYPE", "SUBJECT", "DATA")
    for event in status.events:
        moment = parse_time(event.get("time"))
        data = json.dumps(event.get("data", {}), separators=(",", ":"), default=str)
        grid.add_row(
            format_time(moment, tz, today=now) if moment is not None else "?",
            str(event.get("sequence", "?")),
            str(event.get("type", "?")).removeprefix(_EVENT_PREFIX),
            str(event.get("subject") or "-"),
            _cut(data),
        )
    return grid


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def _cut(text: str) -> str:
    return text if len(text) <= _DATA_WIDTH else text[: _DATA_WIDTH - 3] + "..."
