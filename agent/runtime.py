"""The running agent: composes store, probes, rules, bus and API in one TaskGroup.

Shape (after hypercorn): every long-lived activity is a named task in one
``asyncio.TaskGroup``; a stop request raises :class:`_StopRequestedError` inside the
group, which cancels the siblings; then the shutdown runs in a fixed order with a
bounded grace: stop intake (probes), persist condition state, let the MQTT publisher
flush what is in flight and say offline, stop the API, close the bus and the store.

With ``mqtt.url`` set, every event is queued in the store's outbox in the transaction
that records it (:meth:`Agent._emit`) and the publisher (:mod:`agent.mqtt`, a task of
its own so it can outlive the probes during the shutdown) is woken to send it.
"""

from __future__ import annotations

__all__ = ["SHUTDOWN_GRACE", "Agent"]

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from agent import __version__
from agent.api import ApiServer
from agent.api_writes import WriteApi
from agent.backoff import Backoff
from agent.bus import EventBus
from agent.config import AgentSettings
from agent.errors import ProbeError, StoreCorruptError, StoreError
from agent.kube_status import node_status_mirror
from agent.model import (
    Condition,
    ConditionState,
    Event,
    MqttLinkState,
    MqttStatus,
    ProbeStatus,
    Sample,
)
from agent.notify import Notifier, SystemdNotifier, watchdog_interval
from agent.probes import build_probes
from agent.probes.base import AnyProbe, Probe, ProbeEvent, ProbeUpdate, PushProbe, is_push
from agent.probes.catalog import metrics_of
from agent.remote import RemoteCommands
from agent.remote_control import EngineControl
from agent.rules import ConditionTracker, Transition
from agent.store import OutboxLimits, Store

if TYPE_CHECKING:
    from agent.mqtt import MqttPublisher
    from remediations.service import RemediationService

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 3.0
"""Seconds the shutdown may spend on in-flight work before it is cancelled."""

MQTT_GRACE = 1.5
"""Seconds the shutdown lets the MQTT publisher flush queued events before disconnecting."""

PROBE_UP = "nodemedic_probe_up"
OUTBOX_USED = "nodemedic_mqtt_outbox_used_ratio"
_PROBE_UP_METRICS = frozenset({PROBE_UP})
_LAG_PERIOD = 1.0
_AGENT_SAMPLE_PERIOD = 1.0
_WATCH_RETRY_MIN = 0.5
_HOLD_TICK = 0.25
"""Seconds between re-evaluations of push probes' readings while a condition is pending."""
"""First pause before a failed push probe is watched again; it doubles up to its interval."""


class _StopRequestedError(Exception):
    """Raised inside the task group to unwind it on a stop request."""


class Agent:
    """The running agent; implements :class:`agent.view.AgentView` for the API."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        probes: Sequence[AnyProbe] | None = None,
        clock: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self._probes = list(probes) if probes is not None else build_probes(settings.probes)
        self._clock = clock
        self._notifier = notifier if notifier is not None else SystemdNotifier()
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._store: Store | None = None
        self._tracker: ConditionTracker | None = None
        self._bus = EventBus()
        self._api: ApiServer | None = None
        self._latest: dict[str, Sequence[Sample]] = {}
        self._status: dict[str, ProbeStatus] = {
            probe.name: ProbeStatus(name=probe.name, interval=probe.interval)
            for probe in self._probes
        }
        self._probe_up: dict[str, Sample] = {}
        # Each probe's two probe_up readings, (down, up), made once: a run picks one.
        self._up_readings: dict[str, tuple[Sample, Sample]] = {
            probe.name: (
                Sample.of(PROBE_UP, 0.0, probe=probe.name),
                Sample.of(PROBE_UP, 1.0, probe=probe.name),
            )
            for probe in self._probes
        }
        # The metrics each probe's run covers, looked up once rather than on every run.
        self._covered: dict[str, frozenset[str]] = {
            probe.name: frozenset(spec.name for spec in metrics_of(probe.name))
            for probe in self._probes
        }
        self._progress: dict[str, float] = {}
        self._push = frozenset(probe.name for probe in self._probes if is_push(probe))
        self._holds_waiting = asyncio.Event()
        self._event_counts: Counter[str] = Counter()
        self._lag = 0.0
        self._last_status_line = ""
        self.source = f"nodemedic://{settings.node.name}"
        self._outbox = settings.mqtt.enabled
        self._mqtt: MqttPublisher | None = None
        self._remediation: RemediationService | None = None
        self._remote: RemoteCommands | None = None

    # -- lifecycle -------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the agent to stop; safe to call from a signal handler callback."""
        self._stop.set()

    @property
    def api_url(self) -> str | None:
        """The API's base URL once it listens."""
        return self._api.url if self._api is not None else None

    async def run(self) -> None:
        """Run until :meth:`request_stop`; raises StoreError when the state cannot be opened."""
        self._open_state()
        try:
            self._start_mqtt()
            await self._start_api()
            self._emit(
                "io.nodemedic.agent.started",
                subject=self.settings.node.name,
                data={
                    "version": __version__,
                    "probes": [probe.name for probe in self._probes],
                    "rules": len(self.settings.rules),
                    "api": self.api_url,
                },
            )
            log.info(
                "nodemedic %s started: node %s, %d probes, %d rules, API %s",
                __version__,
                self.settings.node.name,
                len(self._probes),
                len(self.settings.rules),
                self.api_url or "disabled",
            )
            try:
                async with asyncio.TaskGroup() as group:
                    for probe in self._probes:
                        group.create_task(self._loop_of(probe), name=f"probe:{probe.name}")
                    group.create_task(self._measure_lag(), name="loop-lag")
                    if any(is_push(probe) for probe in self._probes):
                        group.create_task(self._hold_loop(), name="push-holds")
                    group.create_task(self._watchdog(), name="watchdog")
                    group.create_task(self._wait_for_stop(), name="stop")
                    if self._outbox:
                        group.create_task(self._agent_samples(), name="agent-samples")
                    if self._remediation is not None:
                        triggers = self._bus.subscribe("remediation", lossless=True)
                        self._remediation.reconcile()
                        group.create_task(
                            self._remediation.engine.consume(triggers), name="remediation"
                        )
                    kube = node_status_mirror(self.settings, self.conditions)
                    if kube is not None:  # NodeConditions and Events on the Kubernetes Node
                        follow = self._bus.subscribe("kubernetes", maxsize=256)
                        group.create_task(kube.run(follow), name="kubernetes")
                    self._check_ready()  # with no probe enabled there is nothing to wait for
            except* _StopRequestedError:
                pass
        finally:
            await self._shutdown()

    def _open_state(self) -> None:
        path = Path(self.settings.state_dir) / "nodemedic.db"
        max_events = self.settings.history.max_events
        bounds = self.settings.mqtt.outbox
        limits = OutboxLimits(max_events=bounds.max_events, max_bytes=int(bounds.max_bytes))
        try:
            self._store = Store.open(path, max_events=max_events, outbox_limits=limits)
        except StoreCorruptError as err:
            # Refusing to start would only crash-loop under systemd and watch nothing; the
            # damaged file is kept beside for a post-mortem, and the reset is an event.
            moved = _move_aside(path, self._clock())
            log.error("%s; moved it to %s and started an empty store", err, moved)
            self._store = Store.open(path, max_events=max_events, outbox_limits=limits)
            self._emit(
                "io.nodemedic.store.reset",
                subject=str(path),
                data={"error": str(err), "moved_to": str(moved)},
            )
        self._tracker = ConditionTracker(
            self.settings.rules,
            flap_window=self.settings.conditions.flap_window.total_seconds(),
            flap_limit=self.settings.conditions.flap_limit,
            restored=self._store.load_conditions(),
        )
        restored = self._tracker.conditions()
        if restored:
            firing = sum(1 for c in restored if c.state is ConditionState.FIRING)
            log.info("restored %d conditions (%d firing)", len(restored), firing)
        self._apply(self._tracker.retire_removed(self._clock()))
        self._open_remediation()

    def _open_remediation(self) -> None:
        """Compose the remediation engine over the store (playbooks were validated at start)."""
        if not self.settings.remediation.enabled or self._store is None:
            return
        from remediations.service import RemediationService, load_library

        actions, library = load_library(self.settings)
        self._remediation = RemediationService(
            self.settings,
            store=self._store,
            conditions=self.conditions,
            emit=lambda type_, subject, data: self._emit(type_, subject=subject, data=data),
            actions=actions,
            library=library,
            clock=self._clock,
        )
        self._remote = RemoteCommands(
            node=self.settings.node.name,
            labels=self.settings.node.labels,
            keys=self.settings.remote.trusted_keys(),
            nonces=self._store,
            control=EngineControl(self._remediation),
            emit=lambda type_, subject, data: self._emit(type_, subject=subject, data=data),
            clock=self._clock,
            max_skew=self.settings.remote.max_clock_skew.total_seconds(),
            max_lifetime=self.settings.remote.max_command_lifetime.total_seconds(),
            max_pause=self.settings.remote.max_pause.total_seconds(),
        )
        log.info(
            "remediation: %d playbooks (%s), %d dormant",
            len(library.playbooks),
            ", ".join(f"{n}:{p.mode.value}" for n, p in sorted(library.playbooks.items())),
            len(library.dormant),
        )

    def _start_mqtt(self) -> None:
        if not self._outbox or self._store is None:
            return
        from agent.mqtt import MqttPublisher  # aiomqtt only when publishing is configured

        remote = self._remote
        self._mqtt = MqttPublisher(
            self.settings.mqtt,
            node=self.settings.node.name,
            version=__version__,
            outbox=self._store,
            conditions=self.conditions,
            commands=remote.handle if remote is not None else None,
        )
        self._mqtt.start()

    async def _start_api(self) -> None:
        api = self.settings.api
        if not api.enabled:
            return
        writes = WriteApi(self._remote, self.settings.remote) if self._remote is not None else None
        self._api = ApiServer(self, remediation=self._remediation, writes=writes, bus=self._bus)
        await self._api.start(api.host, api.port)

    async def _wait_for_stop(self) -> None:
        await self._stop.wait()
        raise _StopRequestedError

    async def _shutdown(self) -> None:
        self._notifier.notify("STOPPING=1")
        log.info("stopping")
        try:
            if self._remediation is not None:
                await self._remediation.engine.aclose(grace=SHUTDOWN_GRACE)
            if self._store is not None and self._tracker is not None:
                self._emit("io.nodemedic.agent.stopping", subject=self.settings.node.name, data={})
                self._save_conditions()
            if self._mqtt is not None:
                await self._mqtt.aclose(grace=MQTT_GRACE)
            if self._api is not None:
                try:
                    await asyncio.wait_for(self._api.stop(), timeout=SHUTDOWN_GRACE)
                except TimeoutError:
                    log.warning("API did not stop within %.0fs", SHUTDOWN_GRACE)
        finally:
            self._bus.close()
            for probe in self._probes:
                probe.close()
            if self._store is not None:
                self._store.close()
                self._store = None
            log.info("stopped")

    # -- probes and rules ------------------------------------------------------------

    async def _probe_loop(self, probe: Probe) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._run_probe(probe)
            now = loop.time()
            self._progress[probe.name] = now
            await asyncio.sleep(_next_slot(now, probe.interval) - now)

    def _loop_of(self, probe: AnyProbe) -> Coroutine[Any, Any, None]:
        if is_push(probe):
            return self._watch_loop(probe)
        return self._probe_loop(cast(Probe, probe))

    async def _watch_loop(self, probe: PushProbe) -> None:
        """Apply a push probe's updates as they come; watch again, backing off, when it fails."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(initial=_WATCH_RETRY_MIN, maximum=max(_WATCH_RETRY_MIN, probe.interval))
        while True:
            try:
                async for update in probe.watch():
                    self._record(probe.name, update, started=self._clock(), duration=0.0)
                    self._progress[probe.name] = loop.time()
                    if update.error is None:
                        backoff.reset()
                error = f"probe {probe.name}: its watch ended"
            except ProbeError as err:
                error = str(err)
            except Exception as err:  # a probe bug must not take the agent down
                log.exception("probe %s raised unexpectedly", probe.name)
                error = f"unexpected {type(err).__name__}: {err}"
            self._record(probe.name, ProbeUpdate(error=error), started=self._clock(), duration=0.0)
            self._progress[probe.name] = loop.time()
            await asyncio.sleep(backoff.next())

    async def _hold_loop(self) -> None:
        """Advance conditions that wait on time alone over push probes' last readings.

        A push probe yields only when something changes (and at its resync), so a
        condition pending for its rule's ``for:``, or a flapping one waiting to stay clear,
        would otherwise move only on the next change: a unit failed for ``for: 10s`` would
        fire at the 60 s resync. Its last reading still holds, so it is observed again.
        """
        push = [p.name for p in self._probes if is_push(p)]
        while True:
            # Asleep until a push probe's reading leaves a condition waiting (see _record).
            await self._holds_waiting.wait()
            await asyncio.sleep(_HOLD_TICK)
            tracker = self._require_tracker()
            if not any(tracker.waiting(self._covered[name]) for name in push):
                self._holds_waiting.clear()
                continue
            now = self._clock()
            transitions: list[Transition] = []
            for name in push:
                # Only a probe with a condition waiting on time: the others' readings were
                # observed when they came and would change nothing (the profile's top cost).
                if (
                    self._status[name].error is None
                    and name in self._latest
                    and tracker.waiting(self._covered[name])
                ):
                    transitions += tracker.observe(self._covered[name], self._latest[name], now)
            self._apply(transitions)

    async def _run_probe(self, probe: Probe) -> None:
        started = self._clock()
        t0 = time.perf_counter()
        error: str | None = None
        samples: Sequence[Sample] = ()
        try:
            if getattr(probe, "runs_inline", False):
                # Read on the loop without ever yielding: no timer could fire during it.
                samples = await probe.sample()
            else:
                # The probe enforces its own timeout; this one only guards against a bug.
                async with asyncio.timeout(probe.timeout + 1.0):
                    samples = await probe.sample()
        except TimeoutError:
            error = f"probe {probe.name} did not finish within {probe.timeout + 1.0:.1f}s"
        except ProbeError as err:
            error = str(err)
        except Exception as err:  # a probe bug must not take the agent down
            log.exception("probe %s raised unexpectedly", probe.name)
            error = f"unexpected {type(err).__name__}: {err}"
        update = ProbeUpdate(samples=samples, error=error)
        self._record(probe.name, update, started=started, duration=time.perf_counter() - t0)

    def _record(self, name: str, update: ProbeUpdate, *, started: float, duration: float) -> None:
        """Apply one probe result: status, events, the rules, readiness."""
        error = update.error
        samples = update.samples
        before = self._status[name]
        self._status[name] = replace(
            before,
            last_run=started,
            duration=duration,
            error=error,
            runs=before.runs + 1,
            failures=before.failures + (error is not None),
            samples=len(samples) if error is None else before.samples,
        )
        self._log_probe_transition(name, before, error)
        for event in update.events:
            self._emit_probe_event(name, event)
        now = self._clock()
        transitions: list[Transition] = []
        tracker = self._require_tracker()
        if error is None:
            finite = [s for s in samples if math.isfinite(s.value)]
            covered = self._covered[name]
            # A push probe's heartbeat mostly repeats its last reading, and a reading
            # observed again moves only conditions that wait on time (see _hold_loop).
            if not (
                name in self._push
                and before.error is None
                and finite == self._latest.get(name)
                and not tracker.waiting(covered)
            ):
                self._latest[name] = finite
                transitions += tracker.observe(covered, finite, now)
            if name in self._push and tracker.waiting(covered):
                self._holds_waiting.set()
        up = self._up_readings[name][error is None]
        # Unchanged readings move only conditions that wait on time; skip the rest.
        if self._probe_up.get(name) is not up or tracker.waiting(_PROBE_UP_METRICS):
            self._probe_up[name] = up
            transitions += tracker.observe(_PROBE_UP_METRICS, list(self._probe_up.values()), now)
        self._apply(transitions)
        self._check_ready()

    def _emit_probe_event(self, name: str, event: ProbeEvent) -> None:
        log.info(
            "probe %s: %s %s",
            name,
            event.type,
            event.subject or "",
            extra={"NODEMEDIC_PROBE": name},
        )
        self._emit(event.type, subject=event.subject, data=event.data)

    def _log_probe_transition(self, name: str, before: ProbeStatus, error: str | None) -> None:
        if error is not None and (before.error is None or before.runs == 0):
            log.warning("probe %s failing: %s", name, error, extra={"NODEMEDIC_PROBE": name})
            self._emit(
                "io.nodemedic.probe.failed", subject=name, data={"probe": name, "error": error}
            )
        elif error is None and before.error is not None:
            log.info("probe %s recovered", name)
            self._emit("io.nodemedic.probe.recovered", subject=name, data={"probe": name})

    def _apply(self, transitions: Iterable[Transition]) -> None:
        changed = False
        for transition in transitions:
            changed = True
            cond = transition.condition
            log.info(
                "condition %s%s %s -> %s: %s",
                cond.rule,
                _fmt_labels(cond.labels),
                transition.previous.value,
                cond.state.value,
                transition.reason,
                # Journal fields, so `journalctl NODEMEDIC_RULE=...` finds a rule's history.
                extra={
                    "NODEMEDIC_RULE": cond.rule,
                    "NODEMEDIC_STATE": cond.state.value,
                    "NODEMEDIC_SEVERITY": cond.severity.value,
                },
            )
            self._emit(transition.event_type, subject=cond.rule, data=transition.event_data())
        if changed:
            self._save_conditions()
            self._update_status_line()
            if self._mqtt is not None:
                self._mqtt.notify_conditions()

    def _save_conditions(self) -> None:
        if self._store is None or self._tracker is None:
            return
        try:
            self._store.save_conditions(self._tracker.conditions())
        except StoreError as err:
            log.error("cannot save condition state: %s", err)

    def _emit(self, type_: str, *, subject: str | None, data: Mapping[str, Any]) -> None:
        store = self._store
        if store is None:
            return
        try:
            event = store.append_event(
                source=self.source,
                type=type_,
                subject=subject,
                data=data,
                time=self._clock(),
                outbox=self._outbox,
            )
        except StoreError as err:
            log.error("cannot record event %s: %s", type_, err)
            self._event_counts["store_failed"] += 1
            return
        self._event_counts[type_] += 1
        self._bus.publish(event)  # the MQTT sender hears of it from the store's commit

    async def _agent_samples(self) -> None:
        """Feed the agent's own series (the outbox's fullness) to the rules, periodically."""
        loop = asyncio.get_running_loop()
        while True:
            store = self._store
            if store is not None:
                try:
                    ratio = store.outbox_used_ratio()
                except StoreError as err:
                    log.error("cannot read the outbox figures: %s", err)
                else:
                    samples = [Sample.of(OUTBOX_USED, ratio)]
                    self._latest["agent"] = samples
                    now = self._clock()
                    self._apply(self._require_tracker().observe({OUTBOX_USED}, samples, now))
            # On the probes' grid (see _next_slot), so it shares their wake-ups.
            now_loop = loop.time()
            await asyncio.sleep(_next_slot(now_loop, _AGENT_SAMPLE_PERIOD) - now_loop)

    # -- readiness, watchdog, lag ----------------------------------------------------

    def _check_ready(self) -> None:
        if self._ready.is_set() or not all(s.runs for s in self._status.values()):
            return
        self._ready.set()
        self._notifier.notify("READY=1")
        self._update_status_line()
        log.info("ready: every probe has run once")

    async def _watchdog(self) -> None:
        interval = watchdog_interval()
        if interval is None:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            await asyncio.sleep(interval)
            stale = self._stalled_probes(loop.time(), started)
            if stale:
                # No ping: if the loops stay stuck, systemd's watchdog restarts the agent.
                log.error("withholding watchdog ping: no progress from %s", ", ".join(stale))
            else:
                self._notifier.notify("WATCHDOG=1")

    def _stalled_probes(self, now: float, started: float) -> list[str]:
        stale = []
        for probe in self._probes:
            allowed = 2 * probe.interval + probe.timeout + 1.0
            last = self._progress.get(probe.name, started)
            if now - last > allowed:
                stale.append(probe.name)
        return stale

    async def _measure_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # On the probes' grid (see _next_slot), so it shares their wake-ups.
            now = loop.time()
            expected = _next_slot(now, _LAG_PERIOD)
            await asyncio.sleep(expected - now)
            self._lag = max(0.0, loop.time() - expected)

    def _update_status_line(self) -> None:
        if self._tracker is None:
            return
        conditions = self._tracker.conditions()
        firing = [c.rule for c in conditions if c.state is ConditionState.FIRING]
        pending = sum(1 for c in conditions if c.state is ConditionState.PENDING)
        ready = "ready" if self._ready.is_set() else "starting"
        line = f"{ready}: {len(self._probes)} probes, {len(firing)} firing"
        if firing:
            line += f" ({', '.join(sorted(set(firing))[:3])})"
        line += f", {pending} pending"
        if line != self._last_status_line:
            self._last_status_line = line
            self._notifier.notify(f"STATUS={line}")

    def _require_tracker(self) -> ConditionTracker:
        if self._tracker is None:
            raise RuntimeError("agent state is not open")
        return self._tracker

    # -- AgentView -------------------------------------------------------------------

    @property
    def node_name(self) -> str:
        """The node's name."""
        return self.settings.node.name

    def readiness(self) -> tuple[bool, str]:
        """Ready once every probe has run once and the API listens, unless MQTT is misconfigured.

        A broker refusing the credentials or the TLS handshake is a configuration to fix,
        so the agent is not ready; a broker that is merely unreachable leaves it ready
        (events wait in the outbox) and /readyz shows the reason under ``mqtt``.
        """
        status = self._mqtt.status() if self._mqtt is not None else None
        if status is not None and status.state is MqttLinkState.MISCONFIGURED:
            return False, f"mqtt: {status.reason}"
        if self._ready.is_set():
            return True, "ready"
        waiting = sorted(name for name, status in self._status.items() if status.runs == 0)
        return False, f"waiting for the first run of probes: {', '.join(waiting)}"

    def latest_samples(self) -> Iterable[Sample]:
        """The last successful samples of every probe."""
        for samples in self._latest.values():
            yield from samples

    def probe_statuses(self) -> Sequence[ProbeStatus]:
        """One status per enabled probe."""
        return list(self._status.values())

    def conditions(self) -> Sequence[Condition]:
        """Every tracked condition."""
        return self._tracker.conditions() if self._tracker is not None else []

    def events(self, *, type: str | None, since: int | None, limit: int) -> Sequence[Event]:
        """Stored events, oldest first."""
        if self._store is None:
            return []
        return self._store.events(type=type, since=since, limit=limit)

    def mqtt_status(self) -> MqttStatus | None:
        """The MQTT link and its outbox; None when publishing is not configured."""
        if self._mqtt is None:
            return None
        status = self._mqtt.status()
        if self._store is None:
            return status
        try:
            stats = self._store.outbox_stats()
        except StoreError as err:
            log.debug("cannot read the outbox figures: %s", err)
            return status
        age = None if stats.oldest_time is None else max(0.0, self._clock() - stats.oldest_time)
        return replace(
            status,
            outbox_depth=stats.depth,
            outbox_bytes=stats.bytes,
            outbox_oldest_age=age,
            outbox_shed=stats.shed_total,
            outbox_used_ratio=stats.used_ratio,
        )

    def event_counts(self) -> Mapping[str, int]:
        """Events emitted since start, by type."""
        return dict(self._event_counts)

    def bus_dropped(self) -> Mapping[str, int]:
        """Events dropped per bus subscriber."""
        return self._bus.dropped()

    def loop_lag(self) -> float:
        """Last measured event-loop lag, seconds."""
        return self._lag

    @property
    def bus(self) -> EventBus:
        """The event bus (subscribe to follow events in-process)."""
        return self._bus


def _next_slot(now: float, interval: float) -> float:
    """When a probe that finished at ``now`` runs next: the next multiple of its interval.

    Runs fall on multiples of the interval on the loop's clock, so probes sharing an
    interval (or with intervals that divide each other) wake the loop once between them
    rather than once each: every wake-up costs more CPU than a small probe's reading.
    At least half an interval separates two runs (rates need a window); a run that
    overran skips the slots it missed instead of bursting.
    """
    return (math.floor((now + interval / 2) / interval) + 1) * interval


def _move_aside(path: Path, now: float) -> Path:
    """Rename a damaged database and its WAL files to ``<name>.corrupt-<epoch>``."""
    target = path.with_name(f"{path.name}.corrupt-{int(now)}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.rename(target.with_name(target.name + suffix))
    return target


def _fmt_labels(labels: Sequence[tuple[str, str]]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f"{k}={v}" for k, v in labels) + "}"
