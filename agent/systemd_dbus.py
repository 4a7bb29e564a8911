"""The agent's one door to systemd: its D-Bus API on the system bus, through ``dbus-fast``.

:class:`SystemdClient` is an async context manager: entering connects to the bus (the
address is injectable: the tests point it at a systemd booted in ``systemd-nspawn``),
adds the match rules for systemd's signals and calls ``Subscribe`` (systemd sends unit
signals only while someone subscribed); leaving disconnects. It speaks the low-level
message API, not proxy objects, so nothing is introspected and every call is one round
trip under :attr:`SystemdClient.timeout`.

Every failure leaves this module as :class:`~agent.errors.SystemdError`, naming the unit
and the D-Bus error; a lost bus is one too, raised by the call that meets it and by
:meth:`SystemdClient.next_change`.
"""

from __future__ import annotations

__all__ = [
    "JobOutcome",
    "SystemdClient",
    "UnitChange",
    "UnitState",
    "unit_name_of_path",
    "unit_path",
]

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Literal, Self

from dbus_fast import BusType, DBusError, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusFastError
from dbus_fast.unpack import unpack_variants

from agent.errors import SystemdError
from agent.systemd_units import (
    UNIT_PATH_PREFIX,
    WATCHED_PROPERTIES,
    JobOutcome,
    UnitChange,
    UnitState,
    unit_name_of_path,
    unit_path,
)

log = logging.getLogger(__name__)

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
PROPERTIES = "org.freedesktop.DBus.Properties"
DISCONNECTED = "org.freedesktop.DBus.Error.Disconnected"
NO_REPLY = "org.freedesktop.DBus.Error.NoReply"

_TYPE_INTERFACES = {
    "service": "Service",
    "socket": "Socket",
    "mount": "Mount",
    "automount": "Automount",
    "swap": "Swap",
    "timer": "Timer",
    "path": "Path",
    "scope": "Scope",
}
_MATCH_RULES = (
    f"type='signal',sender='{SYSTEMD}',interface='{PROPERTIES}',"
    f"member='PropertiesChanged',path_namespace='{UNIT_PATH_PREFIX.rstrip('/')}'",
    f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}',path='{MANAGER_PATH}'",
)
_MAX_QUEUED_CHANGES = 4096
_MAX_UNCLAIMED_JOBS = 256


class SystemdClient:
    """A connection to systemd's D-Bus API.

    Args:
        bus_address: a D-Bus address (``unix:path=/run/dbus/system_bus_socket``); None
            means the system bus (``$DBUS_SYSTEM_BUS_ADDRESS`` or its default path).
        timeout: seconds any one call may take (> 0).
        clock: CLOCK_MONOTONIC seconds, stamped on every received signal.

    Raises:
        ValueError: when ``timeout`` is not positive.
    """

    def __init__(
        self,
        *,
        bus_address: str | None = None,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"systemd client: timeout must be positive, got {timeout}")
        self.bus_address = bus_address
        self.timeout = float(timeout)
        self._clock = clock
        self._bus: MessageBus | None = None
        self._changes: asyncio.Queue[UnitChange | None] = asyncio.Queue()
        self._lost: str | None = None
        self._job_waiters: dict[str, asyncio.Future[str]] = {}
        self._finished_jobs: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._watcher: asyncio.Task[None] | None = None

    @property
    def where(self) -> str:
        """The bus address for messages: the configured one or ``the system bus``."""
        return self.bus_address or "the system bus"

    @property
    def connected(self) -> bool:
        """Whether the bus connection is up."""
        return self._bus is not None and self._bus.connected and self._lost is None

    async def __aenter__(self) -> Self:
        """Connect, add the match rules and subscribe.

        Raises:
            SystemdError: when the bus cannot be reached or systemd does not answer.
        """
        try:
            async with asyncio.timeout(self.timeout):
                bus = MessageBus(bus_address=self.bus_address, bus_type=BusType.SYSTEM)
                self._bus = await bus.connect()
        except TimeoutError:
            raise SystemdError(
                f"cannot connect to {self.where}: no answer within {self.timeout:g}s"
            ) from None
        except (DBusFastError, OSError, EOFError) as err:
            raise SystemdError(f"cannot connect to {self.where}: {err}") from err
        self._bus.add_message_handler(self._on_message)
        self._watcher = asyncio.create_task(self._watch_connection(), name="systemd-bus")
        try:
            for rule in _MATCH_RULES:
                await self._call(
                    "AddMatch",
                    "s",
                    [rule],
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                )
            await self._call("Subscribe")
        except SystemdError:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Disconnect."""
        await self.aclose()

    async def aclose(self) -> None:
        """Disconnect and stop watching the connection; safe to call twice."""
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        for waiter in self._job_waiters.values():
            waiter.cancel()

    # -- reading units -----------------------------------------------------------------

    async def unit(self, name: str) -> UnitState:
        """Read one unit's state (a unit systemd does not know reads as ``not-found``).

        Raises:
            SystemdError: when systemd refuses or does not answer, or the bus is gone.
        """
        path = unit_path(name)
        calls = [self._get_all(path, UNIT, name)]
        kind = name.rpartition(".")[2]
        if kind in _TYPE_INTERFACES:
            calls.append(self._get_all(path, f"{SYSTEMD}.{_TYPE_INTERFACES[kind]}", name))
        merged: dict[str, Any] = {}
        for props in await asyncio.gather(*calls):
            merged.update(props)
        return UnitState(name=name).merged(merged)

    async def list_units(self, patterns: Sequence[str]) -> list[str]:
        """Names of the loaded units matching any of the globs (``ListUnitsByPatterns``).

        Raises:
            SystemdError: when systemd refuses or does not answer, or the bus is gone.
        """
        reply = await self._call("ListUnitsByPatterns", "asas", [[], list(patterns)])
        return sorted(str(row[0]) for row in reply.body[0])

    async def next_change(self, within: float) -> UnitChange | None:
        """The next signal about a unit, or None when none came within ``within`` seconds.

        Raises:
            SystemdError: when the bus connection is lost.
        """
        if self._lost is not None:
            raise SystemdError(self._lost)
        try:
            async with asyncio.timeout(within):
                change = await self._changes.get()
        except TimeoutError:
            return None
        if change is None:
            raise SystemdError(self._lost or f"connection to {self.where} lost")
        return change

    def pending_changes(self) -> list[UnitChange]:
        """The signals already received and not yet taken, without waiting."""
        out: list[UnitChange] = []
        while not self._changes.empty():
            change = self._changes.get_nowait()
            if change is None:  # keep the loss for next_change to raise
                self._changes.put_nowait(None)
                break
            out.append(change)
        return out

    # -- jobs ------------------------------------------------------------------------

    async def start_unit(
        self, name: str, *, job_timeout: float, mode: str = "replace"
    ) -> JobOutcome:
        """``StartUnit`` and wait for the job to finish (see :meth:`run_job`)."""
        return await self.run_job("StartUnit", name, job_timeout=job_timeout, mode=mode)

    async def stop_unit(
        self, name: str, *, job_timeout: float, mode: str = "replace"
    ) -> JobOutcome:
        """``StopUnit`` and wait for the job to finish."""
        return await self.run_job("StopUnit", name, job_timeout=job_timeout, mode=mode)

    async def restart_unit(
        self, name: str, *, job_timeout: float, mode: str = "replace"
    ) -> JobOutcome:
        """``RestartUnit`` and wait for the job to finish."""
        return await self.run_job("RestartUnit", name, job_timeout=job_timeout, mode=mode)

    async def reload_unit(
        self, name: str, *, job_timeout: float, mode: str = "replace"
    ) -> JobOutcome:
        """``ReloadUnit`` and wait for the job to finish."""
        return await self.run_job("ReloadUnit", name, job_timeout=job_timeout, mode=mode)

    async def reset_failed_unit(self, name: str) -> None:
        """``ResetFailedUnit``: forget the unit's failed state and restart counter.

        Raises:
            SystemdError: when systemd refuses (e.g. no such unit) or does not answer.
        """
        await self._call("ResetFailedUnit", "s", [name], unit=name)

    async def run_job(
        self, method: str, name: str, *, job_timeout: float, mode: str = "replace"
    ) -> JobOutcome:
        """Call a job method of the manager and wait for the job's ``JobRemoved``.

        Raises:
            SystemdError: when systemd refuses the job, the job does not finish within
                ``job_timeout`` seconds, or the bus is gone.
        """
        reply = await self._call(method, "ss", [name, mode], unit=name)
        job = str(reply.body[0])
        result = self._finished_jobs.pop(job, None)
        if result is None:
            waiter = asyncio.get_running_loop().create_future()
            self._job_waiters[job] = waiter
            try:
                async with asyncio.timeout(job_timeout):
                    result = await waiter
            except TimeoutError:
                raise SystemdError(
                    f"{method} {name}: job {job} did not finish within {job_timeout:g}s",
                    unit=name,
                ) from None
            finally:
                self._job_waiters.pop(job, None)
        return JobOutcome(unit=name, job=job, result=result)

    # -- internals -------------------------------------------------------------------

    async def _get_all(self, path: str, interface: str, name: str) -> dict[str, Any]:
        reply = await self._call(
            "GetAll", "s", [interface], unit=name, path=path, interface=PROPERTIES
        )
        props: dict[str, Any] = unpack_variants(reply.body[0])
        return props

    async def _call(
        self,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        *,
        unit: str | None = None,
        destination: str = SYSTEMD,
        path: str = MANAGER_PATH,
        interface: str = MANAGER,
    ) -> Message:
        what = f"{member} {unit}" if unit else member
        bus = self._bus
        if bus is None or not bus.connected or self._lost is not None:
            raise SystemdError(
                f"{what}: not connected to {self.where}", unit=unit, dbus_error=DISCONNECTED
            )
        message = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=list(body),
        )
        try:
            async with asyncio.timeout(self.timeout):
                reply = await bus.call(message)
        except TimeoutError:
            raise SystemdError(
                f"{what}: no answer from systemd within {self.timeout:g}s",
                unit=unit,
                dbus_error=NO_REPLY,
            ) from None
        except DBusError as err:
            raise SystemdError(
                f"{what}: {err.type}: {err.text}", unit=unit, dbus_error=err.type
            ) from err
        except (DBusFastError, OSError, EOFError) as err:
            raise SystemdError(
                f"{what}: connection to {self.where} lost ({type(err).__name__})",
                unit=unit,
                dbus_error=DISCONNECTED,
            ) from err
        if reply.message_type is MessageType.ERROR:
            error = reply.error_name or "unknown"
            text = reply.body[0] if reply.body else ""
            raise SystemdError(f"{what}: {error}: {text}", unit=unit, dbus_error=error)
        return reply

    def _on_message(self, message: Message) -> None:
        if message.message_type is not MessageType.SIGNAL:
            return
        member = message.member
        if message.interface == PROPERTIES and member == "PropertiesChanged":
            name = unit_name_of_path(message.path or "")
            if name is None:
                return
            changed = unpack_variants(message.body[1])
            invalidated = tuple(p for p in message.body[2] if p in WATCHED_PROPERTIES)
            if not invalidated and not WATCHED_PROPERTIES.intersection(changed):
                return
            self._push(UnitChange("properties", name, changed, invalidated, self._clock()))
        elif message.interface == MANAGER:
            if member == "JobRemoved":
                _, job, unit, result = message.body
                self._job_finished(str(job), str(result))
                self._push(UnitChange("job", str(unit), {"result": result}, (), self._clock()))
            elif member in {"UnitNew", "UnitRemoved"}:
                kind: Literal["new", "removed"] = "new" if member == "UnitNew" else "removed"
                self._push(UnitChange(kind, str(message.body[0]), {}, (), self._clock()))
            elif member == "Reloading" and not message.body[0]:  # reload finished
                self._push(UnitChange("resync", "", {}, (), self._clock()))

    def _push(self, change: UnitChange) -> None:
        if self._changes.qsize() >= _MAX_QUEUED_CHANGES:
            # A reader that fell this far behind has lost track: drop the backlog and
            # tell it to read everything again rather than grow without bound.
            log.warning(
                "systemd signals: %d queued, dropping them for a resync", self._changes.qsize()
            )
            self.pending_changes()
            change = UnitChange("resync", "", {}, (), change.received)
        self._changes.put_nowait(change)

    def _job_finished(self, job: str, result: str) -> None:
        waiter = self._job_waiters.get(job)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(result)
            return
        # The signal can overtake the coroutine that queued the job; keep it for it.
        self._finished_jobs[job] = result
        while len(self._finished_jobs) > _MAX_UNCLAIMED_JOBS:
            self._finished_jobs.popitem(last=False)

    async def _watch_connection(self) -> None:
        bus = self._bus
        if bus is None:
            return
        reason = ""
        try:
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        except (DBusFastError, OSError, EOFError) as err:
            reason = f" ({type(err).__name__})"
        if self._bus is not bus:  # our own aclose
            return
        self._lost = f"connection to {self.where} lost{reason}"
        log.debug("systemd: %s", self._lost)
        self._changes.put_nowait(None)
        lost = SystemdError(self._lost, dbus_error=DISCONNECTED)
        for waiter in self._job_waiters.values():
            if not waiter.done():
                waiter.set_exception(lost)
