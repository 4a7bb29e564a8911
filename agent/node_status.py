"""What ``nodemedic status`` reads from one agent's HTTP API, and its ``--json`` document.

The agent's own routes are read: ``/readyz`` (readiness and the MQTT link),
``/v1/conditions``, ``/v1/events``, ``/metrics`` (``nodemedic_build_info`` for the version,
``process_start_time_seconds`` for the uptime) and, when the agent runs remediation,
``/v1/remediation`` and ``/v1/runs`` (a 404 there means remediation is not enabled).
"""

from __future__ import annotations

__all__ = ["RUNS_SHOWN", "NodeStatus", "StatusReadError", "read_status"]

import asyncio
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from agent.errors import AgentError

RUNS_SHOWN: Final = 5
"""Remediation runs read and shown, newest first."""

ReadFailure = Literal["unreachable", "http", "data"]
_STATE_ORDER: Final = {"firing": 0, "pending": 1}
_SEVERITY_ORDER: Final = {"critical": 0, "warning": 1, "info": 2}


class StatusReadError(AgentError):
    """Raised when the agent's HTTP API cannot be read.

    Attributes:
        url: the URL that failed.
        kind: ``unreachable`` (no answer in time), ``http`` (an error status) or ``data``
            (an answer that is not the JSON or text expected).
    """

    def __init__(self, url: str, kind: ReadFailure, message: str) -> None:
        super().__init__(message)
        self.url = url
        self.kind = kind


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One agent's state at a glance.

    Attributes:
        api: the API's base URL.
        read_at: epoch seconds it was read.
        node: the node's name.
        version: the agent's version (None if ``/metrics`` did not say).
        started: epoch seconds the agent process started (None if unknown).
        ready: whether ``/readyz`` answered ready.
        ready_reason: what is missing when not ready.
        mqtt: the MQTT link as ``/readyz`` shows it; None when MQTT is not configured.
        conditions: the pending and firing conditions as ``/v1/conditions`` shows them,
            firing first, then by severity and age.
        remediation: ``/v1/remediation`` (pause, playbooks, runs in flight); None when
            the agent runs no remediation.
        runs: the newest runs (``/v1/runs``), newest first.
        events: the newest events as CloudEvents, oldest first.
    """

    api: str
    read_at: float
    node: str
    version: str | None
    started: float | None
    ready: bool
    ready_reason: str | None
    mqtt: dict[str, Any] | None
    conditions: tuple[dict[str, Any], ...]
    remediation: dict[str, Any] | None
    runs: tuple[dict[str, Any], ...]
    events: tuple[dict[str, Any], ...]

    def count(self, state: str) -> int:
        """How many conditions are in ``state`` (``firing`` or ``pending``)."""
        return sum(1 for condition in self.conditions if condition.get("state") == state)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document (its keys are documented in the README and stay stable)."""
        remediation: dict[str, Any] | None = None
        if self.remediation is not None:
            remediation = {
                "paused": bool(self.remediation.get("paused")),
                "reason": self.remediation.get("reason"),
                "in_flight": self.remediation.get("in_flight", 0),
                "runs": list(self.runs),
            }
        return {
            "api": self.api,
            "read_at": _iso(self.read_at),
            "node": self.node,
            "version": self.version,
            "started": _iso(self.started) if self.started is not None else None,
            "uptime_seconds": (
                round(self.read_at - self.started, 3) if self.started is not None else None
            ),
            "ready": self.ready,
            "ready_reason": self.ready_reason,
            "mqtt": self.mqtt,
            "firing": self.count("firing"),
            "pending": self.count("pending"),
            "conditions": list(self.conditions),
            "remediation": remediation,
            "events": list(self.events),
        }


async def read_status(
    api: str, *, events: int, limit: float, clock: Callable[[], float] = time.time
) -> NodeStatus:
    """Read one agent's status from its HTTP API at ``api`` (``http://HOST:PORT``).

    Args:
        api: the API's base URL.
        events: how many of the newest events to read (0: none).
        limit: seconds each request may take.
        clock: epoch seconds now.

    Raises:
        StatusReadError: when a route does not answer, answers with an error, or answers
            something that is not what the agent serves.
    """
    base = api.rstrip("/")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=limit)) as http:
        # One request first: an agent that is down gets one clear error, not five.
        ready = await _get_json(http, f"{base}/readyz", accept=(200, 503))
        conditions_task = asyncio.create_task(
            _get_json(http, f"{base}/v1/conditions"), name="status-conditions"
        )
        events_task = asyncio.create_task(
            _get_json(http, f"{base}/v1/events?limit={events}", skip=events <= 0),
            name="status-events",
        )
        metrics_task = asyncio.create_task(
            _get_text(http, f"{base}/metrics"), name="status-metrics"
        )
        remediation_task = asyncio.create_task(
            _get_json(http, f"{base}/v1/remediation", optional=True), name="status-remediation"
        )
        runs_task = asyncio.create_task(
            _get_json(http, f"{base}/v1/runs?limit={RUNS_SHOWN}", optional=True),
            name="status-runs",
        )
        tasks = (conditions_task, events_task, metrics_task, remediation_task, runs_task)
        await asyncio.wait(tasks)
    for task in tasks:
        failure = task.exception()
        if failure is not None:
            raise failure
    conditions_body, events_body = conditions_task.result(), events_task.result()
    remediation, runs_body = remediation_task.result(), runs_task.result()
    metrics = metrics_task.result()
    version, started = _identity(metrics, f"{base}/metrics")
    mqtt = ready.get("mqtt")
    return NodeStatus(
        api=base,
        read_at=clock(),
        node=str(conditions_body.get("node", "?")),
        version=version,
        started=started,
        ready=ready.get("ready") is True,
        ready_reason=_text_or_none(ready.get("reason")),
        mqtt=mqtt if isinstance(mqtt, dict) else None,
        conditions=_active(_objects(conditions_body, "conditions", f"{base}/v1/conditions")),
        remediation=remediation or None,
        runs=tuple(_objects(runs_body, "runs", f"{base}/v1/runs")) if runs_body else (),
        events=tuple(_objects(events_body, "events", f"{base}/v1/events")) if events_body else (),
    )


async def _get(
    http: aiohttp.ClientSession, url: str, accept: Sequence[int], *, optional: bool = False
) -> str | None:
    try:
        async with http.get(url) as resp:
            body = await resp.text(errors="replace")
            status = resp.status
    except (aiohttp.ClientConnectionError, TimeoutError) as err:
        raise StatusReadError(
            url,
            "unreachable",
            f"cannot reach the agent at {url}: {_why(err)}; is it running, and is this "
            "the address of its api.listen?",
        ) from err
    except aiohttp.ClientError as err:
        raise StatusReadError(url, "data", f"cannot read the answer of {url}: {err}") from err
    if optional and status == 404:
        return None
    if status not in accept:
        raise StatusReadError(url, "http", f"{url} answered HTTP {status}{_detail(body)}")
    return body


async def _get_json(
    http: aiohttp.ClientSession,
    url: str,
    *,
    accept: Sequence[int] = (200,),
    optional: bool = False,
    skip: bool = False,
) -> dict[str, Any]:
    """The JSON object at ``url``; empty when ``optional`` and 404, or when ``skip``."""
    if skip:
        return {}
    body = await _get(http, url, accept, optional=optional)
    if body is None:
        return {}
    try:
        value = json.loads(body, parse_constant=_not_a_number)
    except ValueError as err:
        raise StatusReadError(url, "data", f"{url} did not answer JSON ({err})") from err
    if not isinstance(value, dict):
        raise StatusReadError(
            url, "data", f"{url} answered a JSON {type(value).__name__}, not an object"
        )
    return value


async def _get_text(http: aiohttp.ClientSession, url: str) -> str:
    return await _get(http, url, (200,)) or ""


def _why(err: Exception) -> str:
    if isinstance(err, TimeoutError):
        return "no answer in time"
    if isinstance(err, aiohttp.ClientSSLError):
        return f"TLS failed: {err.os_error}"
    if isinstance(err, aiohttp.ClientConnectorError) and err.os_error.errno:
        return os.strerror(err.os_error.errno).lower()  # "connection refused"
    return str(err) or type(err).__name__


def _not_a_number(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _detail(body: str) -> str:
    """The agent's own explanation of an error answer, if it gave one."""
    try:
        value = json.loads(body)
    except ValueError:
        value = None
    if isinstance(value, dict) and value.get("detail"):
        return f": {value.get('error', 'error')}: {value['detail']}"
    text = " ".join(body.split())
    return f": {text[:200]}" if text else ""


def _objects(body: Any, key: str, url: str) -> list[dict[str, Any]]:
    items = body.get(key) if isinstance(body, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise StatusReadError(url, "data", f"{url}: '{key}' is not a list of objects")
    return items


def _active(conditions: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    active = [c for c in conditions if c.get("state") in _STATE_ORDER]
    active.sort(
        key=lambda c: (
            _STATE_ORDER[c["state"]],
            _SEVERITY_ORDER.get(str(c.get("severity")), 3),
            str(c.get("since", "")),
            str(c.get("name", "")),
        )
    )
    return tuple(active)


def _identity(metrics: str, url: str) -> tuple[str | None, float | None]:
    """(version, process start time) from the Prometheus text exposition."""
    version: str | None = None
    started: float | None = None
    try:
        for family in text_string_to_metric_families(metrics):
            for sample in family.samples:
                if sample.name == "nodemedic_build_info":
                    version = sample.labels.get("version")
                elif sample.name == "process_start_time_seconds":
                    started = float(sample.value)
    except (ValueError, TypeError) as err:
        raise StatusReadError(url, "data", f"{url} is not Prometheus text ({err})") from err
    return version, started


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _iso(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
