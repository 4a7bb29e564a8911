"""The node's MQTT topics, and how an event shows in ``nodemedic events tail``."""

from __future__ import annotations

__all__ = ["Topics", "format_event_line"]

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one node under a prefix (see the topic table in the README)."""

    prefix: str
    node: str

    @property
    def status(self) -> str:
        """Retained online/offline status with the session id."""
        return f"{self.prefix}/nodes/{self.node}/status"

    @property
    def conditions(self) -> str:
        """Retained snapshot of the node's conditions."""
        return f"{self.prefix}/nodes/{self.node}/conditions"

    @property
    def commands(self) -> str:
        """Commands addressed to this node."""
        return f"{self.prefix}/nodes/{self.node}/commands"

    @property
    def fleet_commands(self) -> str:
        """Commands to every node whose selector matches."""
        return f"{self.prefix}/fleet/commands"

    @property
    def fleet_pause(self) -> str:
        """The retained, signed fleet-wide pause of remediation."""
        return f"{self.prefix}/fleet/pause"

    @property
    def batch(self) -> str:
        """Drain batches: JSON arrays of CloudEvents queued during an outage (opt-in)."""
        return f"{self.prefix}/nodes/{self.node}/batch"

    @staticmethod
    def batch_filter(prefix: str, node: str | None) -> str:
        """A subscription filter for the drain batches of one node (or all)."""
        return f"{prefix}/nodes/{node or '+'}/batch"

    def event(self, event_type: str) -> str:
        """Where events of ``event_type`` are published."""
        # Event types are ours, but a topic level must never carry a wildcard or a '/'.
        safe = event_type.replace("/", "_").replace("+", "_").replace("#", "_")
        return f"{self.prefix}/nodes/{self.node}/events/{safe}"

    @staticmethod
    def event_filter(prefix: str, node: str | None, event_type: str | None) -> str:
        """A subscription filter for the events of one node (or all) and one type (or all)."""
        return f"{prefix}/nodes/{node or '+'}/events/{event_type or '#'}"


def format_event_line(event: dict[str, Any], *, width: int = 80) -> str:
    """One line per event: time, node, sequence, type, subject and a short data summary."""
    source = str(event.get("source", ""))
    node = source.removeprefix("nodemedic://")
    data = json.dumps(event.get("data", {}), separators=(",", ":"), default=str)
    if len(data) > width:
        data = data[: width - 3] + "..."
    sequence = event.get("sequence", "?")
    subject = event.get("subject") or "-"
    return f"{event.get('time', '?')} {node} #{sequence} {event.get('type', '?')} {subject} {data}"
