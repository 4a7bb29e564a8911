"""One simulated node: a real :class:`~agent.runtime.Agent` with a synthetic probe.

Each node is the agent's own runtime (store and outbox in its own SQLite file, MQTT
publisher and command subscription, :class:`~agent.remote.RemoteCommands`, rules,
conditions, remediation engine with the fleet budget in etcd), configured as a site
would: its own name and labels, trusted operator key, playbooks dir and state dir. Only
two things are synthetic, and they are the smallest that exercise the real paths:

* :class:`SyntheticLoad` is the ``load`` probe fed from memory instead of
  ``/proc/loadavg``: 0.2 normally, 100 while the node is in :data:`FAULTS` (the
  correlated failure), so the rule ``overload`` fires through the real rules engine;
* :class:`Drain` (``bench.drain``, loaded via ``remediation.action_modules``) is the
  disruptive step standing for a drain: it sleeps for its ``seconds`` and then clears
  the node's fault, as a drain that moved the load away would.

The HTTP API is off (1,000 listeners would only measure the kernel).
"""

from __future__ import annotations

__all__ = [
    "ACTIONS",
    "FAULTS",
    "PLAYBOOK",
    "PREFIX",
    "RULE",
    "Drain",
    "DrainParams",
    "NodeSpec",
    "SyntheticLoad",
    "node_settings",
]

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from agent.config import AgentSettings
from agent.model import Sample
from agent.probes.catalog import PROBE_NAMES
from remediations.actions.base import Action, ActionContext, ActionResult

PREFIX = "/nodemedic-bench/fleet"
"""The etcd key prefix of the simulated fleet's budget."""
RULE = "overload"
PLAYBOOK = "drain-overloaded"

FAULTS: set[str] = set()
"""Names of this process's nodes whose synthetic load breaches (the correlated failure)."""

HIGH, NORMAL = 100.0, 0.2


class SyntheticLoad:
    """The ``load`` probe of one simulated node, reading :data:`FAULTS` instead of /proc.

    Args:
        node: the node it samples.
        interval: seconds between runs.
    """

    name = "load"

    def __init__(self, node: str, interval: float) -> None:
        self.node = node
        self.interval = interval
        self.timeout = interval

    async def sample(self) -> Sequence[Sample]:
        """The three load averages: high while the node is failing."""
        value = HIGH if self.node in FAULTS else NORMAL
        return (
            Sample.of("nodemedic_load1", value),
            Sample.of("nodemedic_load5", value),
            Sample.of("nodemedic_load15", value),
        )

    def close(self) -> None:
        """Nothing to release."""


class DrainParams(BaseModel):
    """How long the drain takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seconds: float = 0.5


class Drain:
    """A disruptive step standing for a drain: wait, then the node's load is gone."""

    name: ClassVar[str] = "bench.drain"
    disruptive: ClassVar[bool] = True
    idempotent: ClassVar[bool] = False
    Params: ClassVar[type[BaseModel]] = DrainParams

    async def precheck(self, ctx: ActionContext) -> None:
        """Nothing to check."""

    async def apply(self, ctx: ActionContext) -> ActionResult:
        """Hold the node drained for ``seconds``, then clear its fault (the target)."""
        assert isinstance(ctx.params, DrainParams)
        await asyncio.sleep(ctx.params.seconds)
        FAULTS.discard(ctx.target)
        return ActionResult(True, f"drained {ctx.target}")

    async def verify(self, ctx: ActionContext) -> ActionResult:
        """The fault is gone."""
        return ActionResult(ctx.target not in FAULTS, "load moved away")


ACTIONS: dict[str, type[Action]] = {Drain.name: Drain}
"""What ``remediation.action_modules: [bench.fleet.node]`` loads."""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """What every node of a run shares; each node adds its own name, dirs and labels.

    Attributes:
        broker: the MQTT URL of the shared Mosquitto.
        etcd: the etcd client URL holding the fleet budget.
        operator_key: the operator's public key (base64), trusted by every node.
        budget: the fleet budget (``max_disruptive``).
        drain_seconds: how long one drain holds its slot.
        interval: the synthetic probe's interval in seconds.
        slot_wait: seconds a run waits for a free slot before it is skipped.
        poll_interval: seconds between a waiting run's looks for a free slot.
    """

    broker: str
    etcd: str
    operator_key: str
    budget: int = 5
    drain_seconds: float = 0.5
    interval: float = 1.0
    slot_wait: float = 600.0
    poll_interval: float = 2.0

    def to_json(self) -> dict[str, Any]:
        """The spec as the worker's start message carries it."""
        return {name: getattr(self, name) for name in self.__slots__}


def node_settings(spec: NodeSpec, node: str, index: int, root: Path) -> AgentSettings:
    """The configuration of node ``node`` under its own directory ``root / node``."""
    home = root / node
    books = home / "playbooks"
    books.mkdir(parents=True, exist_ok=True)
    book = {
        "name": PLAYBOOK,
        "mode": "enforce",
        "trigger": {"conditions": [RULE]},
        "target": node,
        "disruptive": True,
        "steps": [{"action": Drain.name, "params": {"seconds": spec.drain_seconds}}],
        "safety": {"cooldown": "0s", "max_runs": {"count": 100, "per": "1h"}},
    }
    (books / f"{PLAYBOOK}.yaml").write_text(json.dumps(book), encoding="utf-8")
    probes: dict[str, Any] = {name: {"enabled": False} for name in PROBE_NAMES}
    probes["load"] = {"enabled": True, "interval": f"{spec.interval}s"}
    return AgentSettings.model_validate(
        {
            "node": {"name": node, "labels": {"rack": f"r{index % 20:02d}", "sim": "fleet"}},
            "state_dir": str(home),
            "api": {"enabled": False},
            "log": {"level": "warning"},
            "probes": probes,
            "rules": [{"name": RULE, "metric": "nodemedic_load1", "op": ">", "threshold": 50}],
            "mqtt": {"url": spec.broker, "reconnect_max": "2s"},
            "remote": {"keys": [{"id": "operator", "public_key": spec.operator_key}]},
            "remediation": {
                "playbooks_dir": str(books),
                "builtin_playbooks": False,
                "action_modules": ["bench.fleet.node"],
                "pause_file": str(home / "pause"),
                "fleet_budget": {
                    "enabled": True,
                    "endpoints": [spec.etcd],
                    "prefix": PREFIX,
                    "max_disruptive": spec.budget,
                    "lease_ttl": "30s",
                    "request_timeout": "5s",
                    "slot_wait": f"{spec.slot_wait}s",
                    "poll_interval": f"{spec.poll_interval}s",
                },
            },
        }
    )
