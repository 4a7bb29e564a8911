"""systemd units, watched over D-Bus: a push probe driven by systemd's own signals.

The probe subscribes to systemd (``PropertiesChanged``, ``UnitNew``, ``UnitRemoved``) and
yields an update as soon as a watched unit changes, so a unit that fails reaches the rules
within milliseconds, not at the next poll. Every ``interval`` it reads all watched units
again (the resync), which also refreshes the time-in-state figures.

Which units: the ``units`` globs of the config (``*.service`` by default), matched by
systemd itself (``ListUnitsByPatterns``, loaded units only) and by ``fnmatch`` for units
that appear later; a name without wildcards is always watched, loaded or not.

A host that was not booted with systemd (no ``/run/systemd/system``; a container) has no
units to watch: unless a bus address is configured, the probe says so once at info and
reports an empty set, rather than a probe that fails forever. A lost bus is an update with
an error (the probe shows as down, its conditions stay), then a reconnect with backoff.
"""

from __future__ import annotations

__all__ = ["UnitsProbe"]

import asyncio
import collections
import fnmatch
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path

from agent.backoff import Backoff
from agent.errors import SystemdError
from agent.model import Sample
from agent.probes.base import Clock, ProbeUpdate, next_beat
from agent.systemd_dbus import SystemdClient, UnitChange, UnitState

log = logging.getLogger(__name__)

_GLOB_CHARS = frozenset("*?[")
_READ_CONCURRENCY = 16
_RECONNECT_INITIAL = 1.0
_RECONNECT_MAX = 30.0


class UnitsProbe:
    """Watch systemd units' state over D-Bus.

    Args:
        units: unit names and globs (``nginx.service``, ``*.service``, ``getty@*``).
        interval: seconds between two full reads (the resync and heartbeat).
        timeout: seconds one D-Bus call may take.
        restart_window: seconds over which automatic restarts are counted for
            ``nodemedic_unit_recent_restarts``.
        bus_address: the D-Bus address of systemd's bus; None for the system bus.
        booted_marker: the directory that exists when the host was booted with systemd.
        clock: CLOCK_MONOTONIC seconds (systemd's monotonic timestamps use the same clock).
        client_factory: makes the D-Bus client (tests inject one).

    Raises:
        ValueError: when interval, timeout or restart_window is not positive.
    """

    name = "units"

    def __init__(
        self,
        *,
        units: Sequence[str] = ("*.service",),
        interval: float = 60.0,
        timeout: float = 5.0,
        restart_window: float = 600.0,
        bus_address: str | None = None,
        booted_marker: Path = Path("/run/systemd/system"),
        clock: Clock = time.monotonic,
        client_factory: Callable[[], SystemdClient] | None = None,
    ) -> None:
        for label, value in (
            ("interval", interval),
            ("timeout", timeout),
            ("restart_window", restart_window),
        ):
            if value <= 0:
                raise ValueError(f"probe units: {label} must be positive, got {value}")
        self.interval = float(interval)
        self.timeout = float(timeout)
        self.restart_window = float(restart_window)
        self.patterns = tuple(units)
        self.exact = tuple(u for u in units if not _GLOB_CHARS.intersection(u))
        self.bus_address = bus_address
        self._booted_marker = booted_marker
        self._clock = clock
        self._client_factory = client_factory or (
            lambda: SystemdClient(bus_address=bus_address, timeout=self.timeout, clock=clock)
        )
        self._states: dict[str, UnitState] = {}
        self._restarts: dict[str, collections.deque[tuple[float, int]]] = {}
        self._closed = False
        self._down = False

    def close(self) -> None:
        """Stop watching; the current :meth:`watch` ends at its next wake-up."""
        self._closed = True

    def state(self, unit: str) -> UnitState | None:
        """What the probe last learnt about ``unit``, or None when it does not watch it."""
        return self._states.get(unit)

    def watches(self, unit: str) -> bool:
        """Whether ``unit`` matches one of the configured names or globs."""
        return any(fnmatch.fnmatchcase(unit, pattern) for pattern in self.patterns)

    async def watch(self) -> AsyncGenerator[ProbeUpdate, None]:
        """Yield the units' state on every change, and at least once per ``interval``."""
        if self.bus_address is None and not self._booted_marker.is_dir():
            log.info("probe units: this host was not booted with systemd; no units to watch")
            loop = asyncio.get_running_loop()
            while not self._closed:
                yield ProbeUpdate()
                now = loop.time()
                await asyncio.sleep(next_beat(now, self.interval) - now)
            return
        # Never wait longer than the interval: a push probe must yield once per interval.
        pace = min(_RECONNECT_MAX, self.interval)
        backoff = Backoff(initial=min(_RECONNECT_INITIAL, pace), maximum=pace)
        while not self._closed:
            try:
                async with self._client_factory() as client:
                    await self._resync(client)
                    if self._down:
                        log.info("probe units: systemd reachable again on %s", client.where)
                    self._down = False
                    backoff.reset()
                    yield self.update()
                    async for update in self._follow(client):
                        yield update
            except SystemdError as err:
                if not self._down:
                    log.warning("probe units: %s; reconnecting with backoff", err)
                self._down = True
                yield ProbeUpdate(error=f"probe units: {err}")
                await asyncio.sleep(backoff.next())

    def update(self) -> ProbeUpdate:
        """The complete current set of series, from the states last read."""
        now = self._clock()
        samples: list[Sample] = []
        for name in sorted(self._states):
            state = self._states[name]
            samples.append(Sample.of("nodemedic_unit_active", float(state.active), unit=name))
            samples.append(Sample.of("nodemedic_unit_failed", float(state.failed), unit=name))
            if state.state_change > 0:
                samples.append(
                    Sample.of(
                        "nodemedic_unit_state_seconds",
                        max(0.0, now - state.state_change),
                        unit=name,
                        state=state.active_state,
                    )
                )
            if state.n_restarts is not None:
                samples.append(
                    Sample.of("nodemedic_unit_restarts_total", state.n_restarts, unit=name)
                )
                samples.append(
                    Sample.of(
                        "nodemedic_unit_recent_restarts",
                        self._recent_restarts(name, now),
                        unit=name,
                    )
                )
        return ProbeUpdate(samples=samples)

    # -- internals -------------------------------------------------------------------

    async def _follow(self, client: SystemdClient) -> AsyncIterator[ProbeUpdate]:
        """Updates for the signals as they come, and a resync every interval."""
        next_resync = self._clock() + self.interval
        while not self._closed:
            change = await client.next_change(within=max(0.0, next_resync - self._clock()))
            if change is None:
                await self._resync(client)
                next_resync = self._clock() + self.interval
                yield self.update()
                continue
            # Take whatever else already arrived too: one update for a burst of signals.
            if await self._apply(client, [change, *client.pending_changes()]):
                yield self.update()

    async def _apply(self, client: SystemdClient, changes: Iterable[UnitChange]) -> bool:
        changed = False
        to_read: set[str] = set()
        for change in changes:
            if change.kind == "resync":
                await self._resync(client)
                return True
            unit = change.unit
            known = self._states.get(unit)
            if change.kind == "properties" and known is not None and not change.invalidated:
                self._set(unit, known.merged(change.properties))
                changed = True
            elif change.kind == "removed" and known is not None and unit not in self.exact:
                del self._states[unit]
                self._restarts.pop(unit, None)
                changed = True
            elif change.kind in {"properties", "new"} and self.watches(unit):
                to_read.add(unit)
        if to_read:
            await self._read(client, to_read)
            changed = True
        return changed

    async def _resync(self, client: SystemdClient) -> None:
        listed = await client.list_units(self.patterns) if self.patterns else []
        names = set(listed) | set(self.exact)
        for gone in set(self._states) - names:
            del self._states[gone]
            self._restarts.pop(gone, None)
        await self._read(client, names)

    async def _read(self, client: SystemdClient, names: Iterable[str]) -> None:
        pending = sorted(names)
        for start in range(0, len(pending), _READ_CONCURRENCY):
            batch = pending[start : start + _READ_CONCURRENCY]
            for state in await asyncio.gather(*(client.unit(name) for name in batch)):
                self._set(state.name, state)

    def _set(self, name: str, state: UnitState) -> None:
        before = self._states.get(name)
        self._states[name] = state
        if state.n_restarts is None:
            return
        history = self._restarts.setdefault(name, collections.deque())
        previous = before.n_restarts if before is not None else None
        if previous is not None and state.n_restarts > previous:
            history.append((self._clock(), state.n_restarts - previous))
        if before is None or before.active_state != state.active_state:
            log.debug("unit %s: %s", name, state.describe())

    def _recent_restarts(self, name: str, now: float) -> float:
        history = self._restarts.get(name)
        if not history:
            return 0.0
        while history and history[0][0] < now - self.restart_window:
            history.popleft()
        return float(sum(count for _, count in history))
