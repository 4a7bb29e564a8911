"""systemd actions: start, stop, restart, reload a unit and reset its failed state.

Each talks to systemd over D-Bus through :class:`agent.systemd_dbus.SystemdClient` at
``ctx.services.systemd_bus`` (None: the system bus). ``apply`` queues the job and waits
for systemd's ``JobRemoved``; a job that ends other than ``done`` is a failure. ``verify``
reads the unit again and checks it reached the state the action is for, waiting (within
the step's timeout) while the unit is still activating, deactivating or reloading. In dry
run ``apply`` only reads the unit and says what it would do to it.
"""

from __future__ import annotations

__all__ = [
    "ACTIONS",
    "ReloadUnit",
    "ResetFailedUnit",
    "RestartUnit",
    "StartUnit",
    "StopUnit",
    "UnitParams",
]

import asyncio
import re
from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, field_validator

from agent.errors import SystemdError
from agent.systemd_dbus import SystemdClient, UnitState
from remediations.actions.base import ActionContext, ActionError, ActionResult

ClientFactory = Callable[[str | None, float], SystemdClient]
"""Makes a client for (bus address, per-call timeout); tests may inject one."""

_UNIT_NAME = re.compile(
    r"^[A-Za-z0-9:_.\\@-]{1,249}\."
    r"(service|socket|target|device|mount|automount|swap|timer|path|slice|scope)$"
)
_CALL_TIMEOUT = 10.0
_SETTLE_POLL = 0.1
_TRANSITIONAL = frozenset({"activating", "deactivating", "reloading"})


class UnitParams(BaseModel):
    """Params of every systemd action.

    Attributes:
        unit: a full unit name with its type suffix, e.g. ``nginx.service`` (no globs).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit: str

    @field_validator("unit")
    @classmethod
    def _unit_name(cls, value: str) -> str:
        if "@." in value:
            raise ValueError(f"{value!r} is a template; name an instance, e.g. getty@tty1.service")
        if not _UNIT_NAME.fullmatch(value):
            raise ValueError(
                f"invalid unit name {value!r}: use a full name with its type, e.g. "
                "nginx.service or backup.timer (letters, digits, ':_.\\@-'; no globs)"
            )
        return value


def _default_client(bus_address: str | None, timeout: float) -> SystemdClient:
    return SystemdClient(bus_address=bus_address, timeout=timeout)


class _UnitAction:
    """The shape every systemd action shares; subclasses set the class attributes.

    Args:
        client_factory: makes the D-Bus client from the bus address and call timeout.
    """

    name: ClassVar[str]
    disruptive: ClassVar[bool]
    idempotent: ClassVar[bool]
    Params: ClassVar[type[BaseModel]] = UnitParams
    verb: ClassVar[str]
    """What it does, for messages: ``restart``."""
    done: ClassVar[str]
    """The same, done: ``restarted``."""
    method: ClassVar[str]
    """The manager method, e.g. ``RestartUnit``."""
    expected: ClassVar[frozenset[str]]
    """Active states that mean the action took effect."""

    def __init__(self, *, client_factory: ClientFactory = _default_client) -> None:
        self._client_factory = client_factory

    async def precheck(self, ctx: ActionContext) -> None:
        """Refuse a unit systemd does not know, or one that is masked.

        Raises:
            ActionError: naming the unit and why.
        """
        unit = _unit_of(ctx)
        state = await self._read(ctx, unit)
        if state.load_state in {"not-found", "bad-setting", "error"}:
            raise ActionError(f"{self.name}: {unit} cannot be used: load state {state.load_state}")
        if state.load_state == "masked" and self.verb != "stop":
            raise ActionError(f"{self.name}: {unit} is masked; it cannot be {self.done}")

    async def apply(self, ctx: ActionContext) -> ActionResult:
        """Queue the job and wait for it; in dry run only read the unit and report.

        Raises:
            ActionError: when systemd refuses, the job fails or does not finish in time.
        """
        unit = _unit_of(ctx)
        try:
            async with self._client(ctx) as client:
                before = await client.unit(unit)
                details: dict[str, Any] = {
                    "unit": unit,
                    "method": self.method,
                    "before": _facts(before),
                }
                if ctx.dry_run:
                    return ActionResult(
                        True, f"would {self.verb} {unit} (now {before.describe()})", details
                    )
                outcome = await self._act(client, unit, ctx.timeout)
                after = await client.unit(unit)
        except SystemdError as err:
            raise ActionError(f"{self.name}: {err}") from err
        details |= {"job": outcome, "after": _facts(after)}
        if outcome not in {"done", ""}:
            raise ActionError(
                f"{self.name}: the {self.verb} job for {unit} ended {outcome!r}; "
                f"unit now {after.describe()}"
            )
        return ActionResult(True, f"{self.done} {unit}: {after.describe()}", details)

    async def verify(self, ctx: ActionContext) -> ActionResult:
        """Check the unit reached an expected state, waiting while it is in transition."""
        unit = _unit_of(ctx)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ctx.timeout
        try:
            async with self._client(ctx) as client:
                state = await client.unit(unit)
                while state.active_state in _TRANSITIONAL and loop.time() < deadline:
                    await asyncio.sleep(_SETTLE_POLL)
                    state = await client.unit(unit)
        except SystemdError as err:
            return ActionResult(False, f"cannot read {unit}: {err}", {"unit": unit})
        ok = self._took_effect(state)
        want = " or ".join(sorted(self.expected))
        summary = f"{unit} is {state.describe()}" + ("" if ok else f", not {want}")
        return ActionResult(ok, summary, {"unit": unit, "state": _facts(state)})

    def _took_effect(self, state: UnitState) -> bool:
        return state.active_state in self.expected

    async def _act(self, client: SystemdClient, unit: str, job_timeout: float) -> str:
        outcome = await client.run_job(self.method, unit, job_timeout=job_timeout)
        return outcome.result

    async def _read(self, ctx: ActionContext, unit: str) -> UnitState:
        try:
            async with self._client(ctx) as client:
                return await client.unit(unit)
        except SystemdError as err:
            raise ActionError(f"{self.name}: {err}") from err

    def _client(self, ctx: ActionContext) -> SystemdClient:
        return self._client_factory(ctx.services.systemd_bus, min(_CALL_TIMEOUT, ctx.timeout))


def _unit_of(ctx: ActionContext) -> str:
    params = ctx.params
    if not isinstance(params, UnitParams):
        raise ActionError(f"systemd action: params must be UnitParams, got {type(params).__name__}")
    return params.unit


def _facts(state: UnitState) -> dict[str, Any]:
    return {
        "load_state": state.load_state,
        "active_state": state.active_state,
        "sub_state": state.sub_state,
        "result": state.result,
        "n_restarts": state.n_restarts,
        "main_pid": state.main_pid,
    }


class StartUnit(_UnitAction):
    """``systemd.start_unit``: start the unit and wait for the job."""

    name = "systemd.start_unit"
    disruptive = False
    idempotent = True
    verb, done, method = "start", "started", "StartUnit"
    expected = frozenset({"active", "reloading"})


class StopUnit(_UnitAction):
    """``systemd.stop_unit``: stop the unit and wait for the job."""

    name = "systemd.stop_unit"
    disruptive = True
    idempotent = True
    verb, done, method = "stop", "stopped", "StopUnit"
    expected = frozenset({"inactive", "failed"})


class RestartUnit(_UnitAction):
    """``systemd.restart_unit``: restart (or start) the unit and wait for the job."""

    name = "systemd.restart_unit"
    disruptive = True
    idempotent = False
    verb, done, method = "restart", "restarted", "RestartUnit"
    expected = frozenset({"active", "reloading"})


class ReloadUnit(_UnitAction):
    """``systemd.reload_unit``: ask the unit to reload its configuration."""

    name = "systemd.reload_unit"
    disruptive = False
    idempotent = True
    verb, done, method = "reload", "reloaded", "ReloadUnit"
    expected = frozenset({"active"})


class ResetFailedUnit(_UnitAction):
    """``systemd.reset_failed``: clear the unit's failed state and restart counter."""

    name = "systemd.reset_failed"
    disruptive = False
    idempotent = True
    verb, done, method = "reset the failed state of", "reset the failed state of", "ResetFailedUnit"
    expected = frozenset({"active", "reloading", "inactive", "activating", "deactivating"})

    async def _act(self, client: SystemdClient, unit: str, job_timeout: float) -> str:
        await client.reset_failed_unit(unit)
        return ""


ACTIONS: tuple[type[_UnitAction], ...] = (
    StartUnit,
    StopUnit,
    RestartUnit,
    ReloadUnit,
    ResetFailedUnit,
)
"""Every systemd action, for the action registry."""
