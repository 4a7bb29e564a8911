"""The status page's HTML: one self-contained document, no external assets.

Every value that comes from a host or the configuration (condition labels, event data,
playbook names, reasons) goes through :func:`html.escape`; the data the page's script
starts from travels as a JSON ``<script type="application/json">`` block with ``<``
escaped, so it cannot close the block. The stylesheet and the script are files of the
package (``agent/assets/``), inlined and allowed by their SHA-256 in the
Content-Security-Policy (:data:`CONTENT_SECURITY_POLICY`).
"""

from __future__ import annotations

__all__ = ["CONTENT_SECURITY_POLICY", "PageData", "render_page"]

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from importlib.resources import files
from typing import Any, Final

from agent.history import MetricHistory, Point, SeriesSpec
from agent.model import Event
from agent.status_summary import NodeSummary, format_value, iso_utc

_ASSETS = files("agent") / "assets"
_CSS: Final = (_ASSETS / "status.css").read_text(encoding="utf-8")
_JS: Final = (_ASSETS / "status.js").read_text(encoding="utf-8")


def _sha256(text: str) -> str:
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()
    return f"'sha256-{digest}'"


CONTENT_SECURITY_POLICY: Final = (
    f"default-src 'self'; script-src {_sha256(_JS)}; style-src {_sha256(_CSS)}; "
    "img-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
"""The page's policy: its own inline script and style only, requests to itself only."""

CHART_WIDTH: Final = 300
CHART_HEIGHT: Final = 80
CHART_SPAN: Final = 3600.0
"""Seconds a chart spans, ending now."""
_DATA_LIMIT = 200  # characters of an event's data shown in the list
_NO_READINGS = "no readings in the last hour"
_ALLOWED = "\u2714 pass"
_STOPPED = "\u2716 stop"


@dataclass(frozen=True, slots=True)
class PageData:
    """Everything one rendering shows.

    Attributes:
        summary: the node at a glance (see :func:`agent.status_summary.node_summary`).
        history: the charted series.
        now: epoch seconds the page is rendered at.
        runs: the newest remediation runs with their decision records (newest first).
        events: the newest events, newest first.
        stream: True when ``/v1/stream`` serves live updates.
    """

    summary: NodeSummary
    history: MetricHistory
    now: float
    runs: Sequence[Mapping[str, Any]] = ()
    events: Sequence[Event] = ()
    stream: bool = True


def render_page(data: PageData) -> str:
    """The whole HTML document."""
    summary = data.summary
    node = escape(str(summary["node"]))
    boot = {
        "stream": data.stream,
        "now": data.now,
        "span": CHART_SPAN,
        "series": {spec.key: spec.unit for spec in data.history.series},
        "history": data.history.to_json(),
    }
    boot_json = json.dumps(boot, separators=(",", ":")).replace("<", "\\u003c")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>nodemedic \u2014 {node}</title>",
            f"<style>{_CSS}</style></head><body>",
            "<header>",
            f'<h1>nodemedic <span class="node" id="node">{node}</span></h1>',
            _health(summary),
            "</header>",
            '<p class="tz">All times are UTC, written as ISO 8601 (the trailing Z means UTC).</p>',
            '<div id="live" class="visually-hidden" aria-live="polite" aria-atomic="true"></div>',
            "<main>",
            _identity(summary),
            _remediation_controls(summary),
            _conditions(summary),
            _charts(data),
            _runs(data.runs),
            _events(data.events),
            "</main>",
            f'<script type="application/json" id="boot">{boot_json}</script>',
            f"<script>{_JS}</script>",
            "</body></html>",
        ]
    )


def _health(summary: NodeSummary) -> str:
    health = summary["health"]
    return (
        f'<p id="health" class="health health-{escape(health["level"])}" role="status">'
        f'<span class="icon" aria-hidden="true">{escape(health["icon"])}</span> '
        f'<span id="health-text">{escape(health["text"])}</span></p>'
    )


def _identity(summary: NodeSummary) -> str:
    rows = [
        ("Node", "id-node", escape(str(summary["node"]))),
        ("Version", "id-version", escape(str(summary["version"]))),
        (
            "Uptime",
            "id-uptime",
            f'{escape(summary["uptime"])} (since <time datetime="{escape(summary["started"])}">'
            f"{escape(summary['started'])}</time>)",
        ),
        ("Readiness", "id-ready", escape(summary["ready"]["text"])),
        ("Broker link", "id-link", escape(summary["link"]["text"])),
        ("Remediation", "id-remediation", escape(summary["remediation"]["text"])),
        ("Live updates", "id-stream", "connecting\u2026"),
    ]
    items = "".join(f'<dt>{name}</dt><dd id="{ident}">{value}</dd>' for name, ident, value in rows)
    return f'<section aria-labelledby="h-node"><h2 id="h-node">Node</h2><dl>{items}</dl></section>'


def _remediation_controls(summary: NodeSummary) -> str:
    if not summary["remediation"]["enabled"]:
        return ""
    return (
        '<section aria-labelledby="h-pause"><h2 id="h-pause">Pause remediation</h2>'
        "<p>Pausing stops every playbook on this node until resumed. It needs an API token "
        "with the pause permission (<code>remote.api_tokens</code>); the token stays in "
        "this browser tab only.</p>"
        '<form id="pause-form" autocomplete="off">'
        '<label for="token">API token</label> '
        '<input id="token" name="token" type="password" autocomplete="off" spellcheck="false">'
        ' <label class="inline"><input id="remember" type="checkbox"> '
        "keep it for this tab</label>"
        '<div class="buttons"><button type="button" id="pause">Pause</button> '
        '<button type="button" id="resume">Resume</button></div></form>'
        '<p id="pause-result" role="alert"></p></section>'
    )


def _conditions(summary: NodeSummary) -> str:
    rows = "".join(_condition_row(c) for c in summary["conditions"])
    hidden = summary["conditions_hidden"]
    more = f"<p>{hidden} more conditions are not shown.</p>" if hidden else ""
    empty = "" if rows else '<p id="no-conditions">No conditions are tracked yet.</p>'
    return (
        '<section aria-labelledby="h-cond"><h2 id="h-cond">Conditions</h2>'
        '<table id="conditions"><thead><tr><th scope="col">State</th>'
        '<th scope="col">Condition</th><th scope="col">Severity</th>'
        '<th scope="col">Value</th><th scope="col">Since (UTC)</th></tr></thead>'
        f'<tbody id="cond-body">{rows}</tbody></table>{empty}{more}</section>'
    )


def _condition_row(c: Mapping[str, Any]) -> str:
    labels = " ".join(
        f'<span class="label">{escape(k)}={escape(v)}</span>' for k, v in c["labels"].items()
    )
    state = escape(c["state"])
    return (
        f'<tr class="state-{state}">'
        f'<td data-label="State"><span class="icon" aria-hidden="true">{escape(c["icon"])}</span> '
        f"{state}</td>"
        f'<td data-label="Condition"><strong>{escape(c["name"])}</strong> {labels}</td>'
        f'<td data-label="Severity" class="sev-{escape(c["severity"])}">'
        f"{escape(c['severity'])}</td>"
        f'<td data-label="Value">{escape(c["value"])}</td>'
        f'<td data-label="Since"><time datetime="{escape(c["since"])}">'
        f"{escape(c['since'])}</time></td></tr>"
    )


def _charts(data: PageData) -> str:
    figures = "".join(
        _chart(spec, data.history.points(spec.key), data.now) for spec in data.history.series
    )
    return (
        '<section aria-labelledby="h-charts"><h2 id="h-charts">Last hour</h2>'
        f'<div class="charts">{figures}</div></section>'
    )


def _chart(spec: SeriesSpec, points: list[Point], now: float) -> str:
    recent = points and points[-1][0] >= now - CHART_SPAN
    latest = f"{format_value(points[-1][1])}{spec.unit}" if recent else _NO_READINGS
    title = escape(spec.title)
    return (
        f'<figure class="chart" id="chart-{spec.key}">'
        f'<figcaption>{title}: <span id="latest-{spec.key}">{escape(latest)}</span></figcaption>'
        f'<svg viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" '
        f'aria-label="{title} over the last hour" preserveAspectRatio="none">'
        f'<rect width="{CHART_WIDTH}" height="{CHART_HEIGHT}" class="plot"></rect>'
        f'<polyline id="line-{spec.key}" fill="none" points="{polyline(spec, points, now)}">'
        "</polyline></svg></figure>"
    )


def polyline(spec: SeriesSpec, points: Sequence[Point], now: float) -> str:
    """The SVG ``points`` of a series: the last hour, scaled to 0-100 % or 0-max."""
    start = now - CHART_SPAN
    shown = [(t, v) for t, v in points if t >= start]
    top = 100.0 if spec.unit == "%" else max(1.0, max((v for _, v in shown), default=0.0) * 1.1)
    coords = []
    for t, v in shown:
        x = (t - start) / CHART_SPAN * CHART_WIDTH
        y = CHART_HEIGHT - min(max(v, 0.0), top) / top * CHART_HEIGHT
        coords.append(f"{x:.1f},{y:.1f}")
    return " ".join(coords)


def _runs(runs: Sequence[Mapping[str, Any]]) -> str:
    if not runs:
        body = "<p>No remediation runs recorded.</p>"
    else:
        body = "".join(_run(run) for run in runs)
    return (
        '<section id="runs" aria-labelledby="h-runs"><h2 id="h-runs">Remediation runs</h2>'
        f"{body}</section>"
    )


def _run(run: Mapping[str, Any]) -> str:
    head = (
        f"<strong>{escape(str(run['playbook']))}</strong> on {escape(str(run['target']))}: "
        f"{escape(str(run['state']))} ({escape(str(run['mode']))}), requested "
        f"<time>{escape(str(run['requested']))}</time>"
    )
    if run.get("reason"):
        head += f" \u2014 {escape(str(run['reason']))}"
    decisions = "".join(
        "<tr>"
        f'<td data-label="Time"><time>{escape(str(d["time"]))}</time></td>'
        f'<td data-label="Phase">{escape(str(d["phase"]))}</td>'
        f'<td data-label="Gate">{escape(str(d["gate"]))}</td>'
        f'<td data-label="Verdict">{_ALLOWED if d["allowed"] else _STOPPED}</td>'
        f'<td data-label="Reason">{escape(str(d["reason"]))}</td></tr>'
        for d in run.get("decisions", ())
    )
    return (
        f'<details class="run" data-run="{escape(str(run["id"]))}"><summary>{head}</summary>'
        f"<p>Run <code>{escape(str(run['id']))}</code>, source {escape(str(run['source']))}</p>"
        "<table><caption>Decision record: which gate said what</caption><thead><tr>"
        '<th scope="col">Time (UTC)</th><th scope="col">Phase</th><th scope="col">Gate</th>'
        '<th scope="col">Verdict</th><th scope="col">Reason</th></tr></thead>'
        f"<tbody>{decisions}</tbody></table></details>"
    )


def _events(events: Sequence[Event]) -> str:
    rows = "".join(event_row(e) for e in events)
    return (
        '<section aria-labelledby="h-events"><h2 id="h-events">Recent events</h2>'
        '<table id="events"><thead><tr><th scope="col">Time (UTC)</th>'
        '<th scope="col">Type</th><th scope="col">Subject</th><th scope="col">Data</th>'
        f'</tr></thead><tbody id="events-body">{rows}</tbody></table></section>'
    )


def event_row(event: Event) -> str:
    """One row of the events table."""
    when = iso_utc(event.time)
    data = json.dumps(dict(event.data), default=str, separators=(",", ":"))
    if len(data) > _DATA_LIMIT:
        data = data[:_DATA_LIMIT] + "\u2026"
    return (
        f'<tr><td data-label="Time"><time datetime="{when}">{when}</time></td>'
        f'<td data-label="Type">{escape(event.type.removeprefix("io.nodemedic."))}</td>'
        f'<td data-label="Subject">{escape(event.subject or "")}</td>'
        f'<td data-label="Data"><code>{escape(data)}</code></td></tr>'
    )
