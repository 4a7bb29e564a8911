"""The fleet as the broker retains it: one line per node for ``nodemedic fleet``.

Each node leaves two retained messages under the topic prefix: ``nodes/<node>/status``
(its birth message, or its will / clean-stop message when offline) and
``nodes/<node>/conditions`` (its current condition set). :func:`fleet_nodes` turns what
the broker sent into one :class:`FleetNode` per node, ordered for an operator: offline
and unknown nodes first, then nodes with firing conditions (most severe first), then
healthy ones. A payload that cannot be read is shown on its node, saying what was wrong.
"""

from __future__ import annotations

__all__ = ["FleetNode", "fleet_json", "fleet_nodes", "render_fleet"]

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any, Final

from rich.console import Console, RenderableType
from rich.text import Text

from agent.terminal import emit, format_age, format_time, parse_time, styled, table

_SEVERITY_RANK: Final = {"critical": 2, "warning": 1, "info": 0}
_STATES: Final = ("online", "offline")
_SHOWN_ERROR: Final = 80


@dataclass(frozen=True, slots=True)
class FleetNode:
    """One node as its retained messages describe it.

    Attributes:
        name: the node's name (its topic level).
        status: ``online``, ``offline``, or ``unknown`` (no status message, or one that
            cannot be read).
        reason: why it is offline: ``stopped`` or ``connection lost`` (the will).
        since: epoch seconds the node went online or offline, when the message says.
        last_seen: the latest moment the node is known to have been up, for a node whose
            connection was lost (its session start or its last conditions snapshot).
        version: the agent's version (online nodes).
        session: the session id of the status message.
        firing: the firing conditions as the snapshot shows them, most severe first.
        pending: how many conditions are pending.
        has_conditions: whether a conditions snapshot was retained.
        problems: what was wrong with a payload (``status: not JSON (...)``).
    """

    name: str
    status: str = "unknown"
    reason: str | None = None
    since: float | None = None
    last_seen: float | None = None
    version: str | None = None
    session: str | None = None
    firing: tuple[dict[str, Any], ...] = ()
    pending: int = 0
    has_conditions: bool = False
    problems: tuple[str, ...] = field(default=())

    @property
    def severity(self) -> int:
        """Rank of the most severe firing condition (-1 with none)."""
        return max((_SEVERITY_RANK.get(str(c.get("severity")), 0) for c in self.firing), default=-1)

    @property
    def group(self) -> int:
        """0: offline or unknown; 1: firing conditions or an unreadable snapshot; 2: healthy."""
        if self.status != "online":
            return 0
        if self.firing or self.problems:
            return 1
        return 2

    def to_json(self) -> dict[str, Any]:
        """The node in the ``--json`` document."""
        return {
            "node": self.name,
            "status": self.status,
            "reason": self.reason,
            "since": _iso(self.since),
            "last_seen": _iso(self.last_seen),
            "version": self.version,
            "session": self.session,
            "firing": list(self.firing),
            "pending": self.pending,
            "problems": list(self.problems),
        }


def fleet_nodes(messages: Iterable[tuple[str, bytes]], prefix: str) -> list[FleetNode]:
    """One node per name found under ``prefix``, in the order an operator reads them.

    Args:
        messages: (topic, payload) pairs in arrival order; a later one replaces an
            earlier one on the same topic.
        prefix: the topic prefix (``mqtt.topic_prefix``).
    """
    latest: dict[tuple[str, str], bytes] = {}
    start = f"{prefix}/nodes/"
    for topic, payload in messages:
        if not topic.startswith(start):
            continue
        node, _, kind = topic.removeprefix(start).partition("/")
        if node and kind in ("status", "conditions"):
            latest[(node, kind)] = payload
    names = sorted({node for node, _ in latest})
    nodes = [
        _node(name, latest.get((name, "status")), latest.get((name, "conditions")))
        for name in names
    ]
    # Within the firing group the most severe first; the rest by name.
    nodes.sort(key=lambda n: (n.group, -n.severity if n.group == 1 else 0, n.name))
    return nodes


def _node(name: str, status: bytes | None, conditions: bytes | None) -> FleetNode:
    problems: list[str] = []
    fields: dict[str, Any] = {}
    alive: list[float] = []
    if status is not None:
        body, error = _json_object(status)
        state = body.get("state") if body is not None else None
        if body is None or state not in _STATES:
            problems.append(f"status: {error or _bad_state(state)}")
        else:
            fields = {
                "status": state,
                "reason": _text(body.get("reason")),
                "since": parse_time(body.get("since")),
                "version": _text(body.get("version")),
                "session": _text(body.get("session")),
            }
            alive.extend(_times(body.get("session_started")))
    if conditions is not None:
        body, error = _json_object(conditions)
        items = body.get("conditions") if body is not None else None
        bad = error or _bad_conditions(items)
        if body is None or not isinstance(items, list) or bad is not None:
            problems.append(f"conditions: {bad}")
        else:
            firing = [c for c in items if c["state"] == "firing"]
            firing.sort(key=lambda c: (-_SEVERITY_RANK.get(c["severity"], 0), c["name"]))
            fields |= {
                "firing": tuple(firing),
                "pending": sum(1 for c in items if c["state"] == "pending"),
                "has_conditions": True,
            }
            alive.extend(_times(body.get("time")))
    if fields.get("status") == "offline" and fields.get("reason") != "stopped":
        # A will says when its session began, not when it ended: the node was last seen
        # alive at the latest moment any of its messages vouches for.
        fields["last_seen"] = max(alive, default=None)
    return FleetNode(name=name, problems=tuple(problems), **fields)


def _json_object(payload: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(the decoded object, None), or (None, what is wrong with the payload)."""
    try:
        value = json.loads(payload, parse_constant=_not_a_number)
    except (ValueError, UnicodeDecodeError) as err:
        return None, f"not JSON ({_shown(str(err))}): {_shown(repr(payload))}"
    if not isinstance(value, dict):
        return None, f"a JSON {type(value).__name__}, not an object: {_shown(repr(payload))}"
    return value, None


def _not_a_number(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _bad_state(state: object) -> str:
    if state is None:
        return "no 'state'"
    return f"'state' is {_shown(repr(state))}, expected online or offline"


def _bad_conditions(items: object) -> str | None:
    if not isinstance(items, list):
        return "'conditions' is not a list"
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            return f"conditions[{index}] is not an object"
        for key in ("name", "state", "severity"):
            if not isinstance(item.get(key), str):
                return f"conditions[{index}] has no '{key}' string"
    return None


def _times(value: object) -> list[float]:
    moment = parse_time(value)
    return [] if moment is None else [moment]


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _shown(text: str) -> str:
    return text if len(text) <= _SHOWN_ERROR else text[: _SHOWN_ERROR - 3] + "..."


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


# -- output ------------------------------------------------------------------------------


def fleet_json(
    nodes: list[FleetNode], *, prefix: str, read_at: float, complete: bool
) -> dict[str, Any]:
    """The ``--json`` document (its keys are documented in the README and stay stable)."""
    return {
        "prefix": prefix,
        "read_at": _iso(read_at),
        "complete": complete,
        "nodes": [node.to_json() for node in nodes],
    }


def render_fleet(
    nodes: list[FleetNode],
    out: Console,
    *,
    prefix: str,
    now: float,
    complete: bool,
    tz: tzinfo | None = None,
) -> None:
    """Print one line per node on ``out``, with a summary line above."""
    offline = sum(1 for node in nodes if node.group == 0)
    firing = sum(1 for node in nodes if node.group == 1)
    summary = (
        f"FLEET {prefix} at {format_time(now, tz)}: {len(nodes)} node{'s' * (len(nodes) != 1)}, "
        f"{offline} offline or unknown, {firing} with firing conditions or unreadable, "
        f"{len(nodes) - offline - firing} healthy"
    )
    parts: list[RenderableType] = [Text(summary, style="bold")]
    if not complete:
        parts.append(
            styled(
                "INCOMPLETE: retained messages were still arriving at the time limit "
                "(raise --timeout)",
                "warn",
            )
        )
    if not nodes:
        parts.append(
            f"no node has a retained status or conditions message under {prefix}/nodes/ "
            "that this user may read (check mqtt.topic_prefix and the broker's ACL)"
        )
    else:
        grid = table("NODE", "STATUS", "SINCE", "CONDITIONS", "VERSION")
        for node in nodes:
            grid.add_row(
                node.name,
                _status(node),
                _since(node, now, tz),
                _conditions(node),
                node.version or "-",
            )
        parts.append(grid)
    problems = [f"  {node.name}: {problem}" for node in nodes for problem in node.problems]
    if problems:
        parts += ["", Text("UNREADABLE RETAINED MESSAGES", style="bold"), *problems]
    emit(out, *parts)


def _status(node: FleetNode) -> Text:
    status_problems = [p for p in node.problems if p.startswith("status:")]
    if status_problems:
        return styled("UNKNOWN (unreadable status, see below)", "bad")
    if node.status == "online":
        return styled("online", "good")
    if node.status == "offline":
        return styled(f"OFFLINE ({node.reason})" if node.reason else "OFFLINE", "bad")
    return styled("UNKNOWN (no status message)", "bad")


def _since(node: FleetNode, now: float, tz: tzinfo | None) -> str:
    if node.since is not None and (node.status == "online" or node.reason == "stopped"):
        return f"{format_time(node.since, tz, today=now)} ({format_age(now - node.since)} ago)"
    if node.status == "offline" and node.last_seen is not None:
        ago = format_age(now - node.last_seen)
        return f"after {format_time(node.last_seen, tz, today=now)} (last seen {ago} ago)"
    return "-"


def _conditions(node: FleetNode) -> Text:
    bad = [p for p in node.problems if p.startswith("conditions:")]
    if bad:
        return styled("UNREADABLE (see below)", "bad")
    if not node.has_conditions:
        return styled("no snapshot", "dim")
    pending = f"; {node.pending} pending" if node.pending else ""
    if not node.firing:
        return styled(f"none firing{pending}", "good")
    counts = Counter((str(c["severity"]), str(c["name"])) for c in node.firing)
    names = [
        f"{severity} {name}" + (f" x{count}" if count > 1 else "")
        for (severity, name), count in counts.items()
    ]
    worst = str(node.firing[0]["severity"])
    return styled(f"{len(node.firing)} FIRING: {', '.join(names)}{pending}", worst)
