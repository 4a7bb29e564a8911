"""The agent's state on its Kubernetes Node: conditions as NodeConditions, runs as Events.

As node-problem-detector does, each rule becomes one NodeCondition type, the prefix
followed by the rule's name in CamelCase (``filesystem-almost-full`` ->
``NodemedicFilesystemAlmostFull``): status ``True`` while any of the rule's series fires,
``False`` once none does (the type stays, so controllers see it cleared), with a CamelCase
reason, a message naming the series, value and threshold, and ``lastTransitionTime`` /
``lastHeartbeatTime``. medik8s, cluster-autoscaler or a scheduler can act on them.
Remediation runs (started, succeeded, failed, skipped...) become core/v1 Events on the
Node, named as the kubelet names its own.

:class:`NodeStatusMirror` is one task of the runtime. It never blocks it: it reads the
event bus through a bounded subscription, so a condition change only marks the status
dirty and the next update writes the *current* set (changes coalesce); updates are at
least ``min_interval`` apart; every request has a timeout; an unreachable API is logged
once and retried with backoff, Events waiting in a bounded queue meanwhile. At start (and
after every outage) it reads the Node first: types of rules no longer configured are
deleted, types of rules not firing are set ``False``.

The status is written with a strategic merge patch on ``nodes/<name>/status``, which
merges ``status.conditions`` by ``type``: other owners' conditions (the kubelet's
``Ready``) are never touched.
"""

from __future__ import annotations

__all__ = ["NodeStatusMirror", "condition_type", "desired_conditions", "node_status_mirror"]

import asyncio
import collections
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent.backoff import Backoff
from agent.config_kubernetes import KubernetesConfig
from agent.errors import BusClosedError, KubernetesError
from agent.kube_client import KubeApi, missing_client
from agent.model import ConditionState, Event

if TYPE_CHECKING:
    from agent.bus import Subscription
    from agent.config import AgentSettings, RuleConfig
    from agent.model import Condition

log = logging.getLogger(__name__)

_MESSAGE_MAX = 1024
_SERIES_SHOWN = 5
_RETRY_MIN = 1.0
_RUN_EVENTS = {
    "started": ("Normal", "RemediationStarted"),
    "succeeded": ("Normal", "RemediationSucceeded"),
    "failed": ("Warning", "RemediationFailed"),
    "skipped": ("Normal", "RemediationSkipped"),
    "would_run": ("Normal", "RemediationWouldRun"),
    "awaiting_approval": ("Normal", "RemediationAwaitingApproval"),
    "escalated": ("Warning", "RemediationEscalated"),
    "interrupted": ("Warning", "RemediationInterrupted"),
}
_RUN_PREFIX = "io.nodemedic.remediation."
_CONDITION_PREFIX = "io.nodemedic.condition."


def condition_type(rule: str, config: KubernetesConfig) -> str:
    """The NodeCondition type of ``rule``: the prefix and its CamelCase name (or mapping)."""
    conditions = config.node_conditions
    suffix = conditions.types.get(rule) or _camel(rule)
    return conditions.prefix + suffix


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[-_.]+", name) if part)


@dataclass(frozen=True, slots=True)
class DesiredCondition:
    """One NodeCondition as the agent wants it on the Node."""

    type: str
    status: str
    """``True`` or ``False``."""
    reason: str
    message: str
    since: float
    """Epoch seconds of the change this status reflects (its lastTransitionTime if new)."""


def desired_conditions(
    conditions: Iterable[Condition],
    rules: Sequence[RuleConfig],
    config: KubernetesConfig,
    *,
    now: float,
) -> dict[str, DesiredCondition]:
    """Each configured rule's NodeCondition, True while any of its series fires.

    Rules whose names map to the same type share it: True if any of them fires.
    """
    by_rule: dict[str, list[Condition]] = collections.defaultdict(list)
    for condition in conditions:
        by_rule[condition.rule].append(condition)
    wanted: dict[str, DesiredCondition] = {}
    for rule in rules:
        type_ = condition_type(rule.name, config)
        mine = by_rule.get(rule.name, [])
        firing = [c for c in mine if c.state is ConditionState.FIRING]
        camel = type_.removeprefix(config.node_conditions.prefix) or _camel(rule.name)
        if firing:
            shown = "; ".join(_series(c, rule) for c in firing[:_SERIES_SHOWN])
            more = len(firing) - _SERIES_SHOWN
            message = f"{rule.description or rule.name} ({rule.severity.value}): {shown}"
            message += f"; and {more} more" if more > 0 else ""
            found = DesiredCondition(
                type_, "True", camel, message[:_MESSAGE_MAX], min(c.since for c in firing)
            )
        else:
            since = max((c.since for c in mine), default=now)
            message = f"{rule.description or rule.name}: not firing"
            found = DesiredCondition(type_, "False", f"No{camel}", message[:_MESSAGE_MAX], since)
        if type_ not in wanted or found.status == "True":
            wanted[type_] = found
    return wanted


def _series(condition: Condition, rule: RuleConfig) -> str:
    labels = ",".join(f"{k}={v}" for k, v in condition.labels)
    value = "gone" if condition.value is None else f"{condition.value:g}"
    where = f"{labels} " if labels else ""
    return f"{where}value {value} {rule.op} {rule.threshold:g}"


def node_status_mirror(
    settings: AgentSettings, conditions: Callable[[], Sequence[Condition]]
) -> NodeStatusMirror | None:
    """The mirror the settings ask for, or None (Kubernetes off, nothing to mirror, no client)."""
    config = settings.kubernetes
    if not config.active() or not (config.node_conditions.enabled or config.events.enabled):
        return None
    missing = missing_client()
    if missing is not None:
        log.error("kubernetes: %s; NodeConditions and Events are off", missing)
        return None
    return NodeStatusMirror(
        config,
        node=config.node(settings.node.name),
        rules=settings.rules,
        conditions=conditions,
    )


class NodeStatusMirror:
    """Writes conditions onto the Node and remediation runs as Events (see the module).

    Args:
        config: the ``kubernetes`` section.
        node: the Node's name.
        rules: the configured rules (each is one condition type).
        conditions: returns the agent's current conditions.
        connect: opens the API (tests may count or fail connections).
        clock: epoch seconds, for the times written.
    """

    def __init__(
        self,
        config: KubernetesConfig,
        *,
        node: str,
        rules: Sequence[RuleConfig],
        conditions: Callable[[], Sequence[Condition]],
        connect: Callable[[KubernetesConfig], Awaitable[KubeApi]] = KubeApi.connect,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._node = node
        self._rules = list(rules)
        self._conditions = conditions
        self._connect = connect
        self._clock = clock
        self._api: KubeApi | None = None
        self._backoff = Backoff(initial=_RETRY_MIN, maximum=config.retry_max.total_seconds())
        self._retry_at = 0.0
        self._failing: str | None = None
        self._dirty = config.node_conditions.enabled
        self._reconciled = False
        self._last_patch = -float("inf")
        self._on_node: dict[str, tuple[str, str | None]] = {}
        """Our types on the Node: (status, lastTransitionTime), as read or last written."""
        self._written: dict[str, tuple[str, str, str]] = {}
        self._outgoing: collections.deque[dict[str, Any]] = collections.deque()
        self._tokens = float(config.events.burst)
        self._refilled = 0.0
        self.dropped_events = 0
        """Events not sent: over the rate, or pushed out of the queue during an outage."""
        self.patches = 0
        """Status updates written."""

    async def run(self, events: Subscription) -> None:
        """Follow ``events`` until the bus closes; never raises but on cancellation."""
        loop = asyncio.get_running_loop()
        self._refilled = loop.time()
        try:
            while True:
                try:
                    self._note(await events.get(self._wait(loop.time())))
                    while True:
                        self._note(events.get_nowait())
                except (TimeoutError, asyncio.QueueEmpty):
                    pass
                except BusClosedError:
                    return
                try:
                    await self._work(loop.time())
                except Exception:  # a bug here must not take the agent down
                    log.exception("kubernetes: updating node %s failed unexpectedly", self._node)
                    self._retry_at = loop.time() + self._backoff.next()
        finally:
            if self._api is not None:
                await self._api.aclose()

    # -- intake ------------------------------------------------------------------------

    def _note(self, event: Event) -> None:
        if event.type.startswith(_CONDITION_PREFIX):
            self._dirty = self._config.node_conditions.enabled
        elif event.type.startswith(_RUN_PREFIX) and self._config.events.enabled:
            kind = event.type.removeprefix(_RUN_PREFIX)
            if kind in _RUN_EVENTS:
                self._queue(self._event_body(event, kind))

    def _queue(self, body: dict[str, Any]) -> None:
        if len(self._outgoing) >= self._config.events.queue:
            self._outgoing.popleft()
            self._drop("the queue is full while the API cannot be reached")
        self._outgoing.append(body)

    def _drop(self, why: str) -> None:
        if self.dropped_events == 0 or self.dropped_events % 100 == 0:
            log.warning("kubernetes: dropping Events for node %s: %s", self._node, why)
        self.dropped_events += 1

    def _event_body(self, event: Event, kind: str) -> dict[str, Any]:
        severity, reason = _RUN_EVENTS[kind]
        data = event.data
        what = f"playbook {data.get('playbook', event.subject)} on {data.get('target', '?')}"
        detail = data.get("reason") or data.get("summary") or ""
        if kind == "skipped" and data.get("gate"):
            detail = f"gate {data['gate']}: {detail}"
        if data.get("dry_run"):
            what += " (dry run)"
        message = f"{what} {kind.replace('_', ' ')}" + (f": {detail}" if detail else "")
        stamp = _rfc3339(event.time)
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{self._node}.{event.id.lower()}"},
            # As the kubelet refers to its Node: the uid is the node's name.
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Node",
                "name": self._node,
                "uid": self._node,
            },
            "reason": reason,
            "message": message[:_MESSAGE_MAX],
            "type": severity,
            "source": {"component": "nodemedic", "host": self._node},
            "reportingComponent": "nodemedic",
            "reportingInstance": self._node,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }

    # -- output ------------------------------------------------------------------------

    def _wait(self, now: float) -> float:
        """Seconds until something is due (the bus may wake the loop earlier)."""
        conditions = self._config.node_conditions
        due = now + conditions.heartbeat.total_seconds()
        if conditions.enabled:
            due = min(due, self._last_patch + conditions.heartbeat.total_seconds())
            if self._dirty:
                due = min(due, self._last_patch + conditions.min_interval.total_seconds())
        if self._outgoing:
            due = now
        return max(0.0, self._retry_at - now, due - now)

    async def _work(self, now: float) -> None:
        if now < self._retry_at:
            return
        try:
            if self._api is None:
                self._api = await self._connect(self._config)
            if self._config.node_conditions.enabled and self._status_due(now):
                await self._sync_status(self._api, now)
            await self._send_events(self._api, now)
        except KubernetesError as err:
            self._failed(err, now)
            return
        if self._failing is not None:
            log.info("kubernetes: node %s is updated again", self._node)
            self._failing = None
        self._backoff.reset()

    def _status_due(self, now: float) -> bool:
        conditions = self._config.node_conditions
        if now >= self._last_patch + conditions.heartbeat.total_seconds():
            return True
        return self._dirty and now >= self._last_patch + conditions.min_interval.total_seconds()

    def _failed(self, err: KubernetesError, now: float) -> None:
        message = str(err)
        if err.status == 404 and "get node" in message:
            message += "; set kubernetes.node_name or NODE_NAME to the Node's name"
        if self._failing is None:
            log.warning("kubernetes: cannot update node %s: %s; retrying", self._node, message)
        elif self._failing != message:
            log.debug("kubernetes: still failing for node %s: %s", self._node, message)
        self._failing = message
        self._reconciled = False  # the Node may have changed meanwhile: read it again
        self._retry_at = now + self._backoff.next()

    async def _sync_status(self, api: KubeApi, now: float) -> None:
        if not self._reconciled:
            node = await api.node(self._node)
            prefix = self._config.node_conditions.prefix
            self._on_node = {
                t: (c.status, c.last_transition)
                for t, c in node.conditions.items()
                if t.startswith(prefix)
            }
            self._written = {}
            self._reconciled = True
        wanted = desired_conditions(
            self._conditions(), self._rules, self._config, now=self._clock()
        )
        shown = {t: w for t, w in wanted.items() if w.status == "True" or t in self._on_node}
        visible = {t: (w.status, w.reason, w.message) for t, w in shown.items()}
        stale = sorted(set(self._on_node) - set(wanted))
        heartbeat = now >= self._last_patch + self._config.node_conditions.heartbeat.total_seconds()
        if not (shown or stale):  # none of ours on the Node and none firing: nothing to beat
            self._dirty = False
            self._last_patch = now
            return
        if visible == self._written and not stale and not heartbeat:
            self._dirty = False
            return
        beat = _rfc3339(self._clock())
        entries: list[dict[str, Any]] = []
        on_node: dict[str, tuple[str, str | None]] = {}
        for type_, want in sorted(shown.items()):
            status, transition = self._on_node.get(type_, ("", None))
            if status != want.status or transition is None:
                transition = _rfc3339(want.since)
            on_node[type_] = (want.status, transition)
            entries.append(
                {
                    "type": type_,
                    "status": want.status,
                    "reason": want.reason,
                    "message": want.message,
                    "lastHeartbeatTime": beat,
                    "lastTransitionTime": transition,
                }
            )
        entries += [{"$patch": "delete", "type": type_} for type_ in stale]
        await api.patch_node_status(self._node, {"status": {"conditions": entries}})
        self.patches += 1
        self._dirty = False
        self._last_patch = now
        for type_, (status, _) in on_node.items():
            if self._on_node.get(type_, ("", None))[0] != status:
                log.info("kubernetes: node %s condition %s is %s", self._node, type_, status)
        for type_ in stale:
            log.info(
                "kubernetes: node %s condition %s deleted: its rule is gone", self._node, type_
            )
        self._on_node = on_node
        self._written = visible

    async def _send_events(self, api: KubeApi, now: float) -> None:
        events = self._config.events
        rate = events.per_minute / 60.0
        self._tokens = min(float(events.burst), self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        while self._outgoing:
            if self._tokens < 1.0:
                self._outgoing.popleft()
                self._drop(f"over the rate of {events.per_minute:g} a minute")
                continue
            try:
                await api.create_event(events.namespace, self._outgoing[0])
            except KubernetesError as err:
                if err.status != 409:  # 409: it was created before a lost answer
                    raise
            self._outgoing.popleft()
            self._tokens -= 1.0


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
