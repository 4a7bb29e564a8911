"""``drain.haproxy`` and ``undrain.haproxy``: this host's servers out of HAProxy and back.

Through HAProxy's runtime API (:mod:`remediations.haproxy`), ``drain.haproxy`` sets each
of this host's server entries (``remediation.drain.haproxy.servers``, backend/server) to
DRAIN, so HAProxy sends them no new connections, then waits until their current sessions
reach zero or ``drain_timeout`` passes (the result says which), then with
``maint_after_drain`` puts them in MAINT. ``undrain.haproxy`` sets them READY again.

Both are idempotent: a server already drained (or in MAINT) is left as it is and the wait
still runs; undraining a ready server changes nothing. Step params override the config.
"""

from __future__ import annotations

__all__ = ["ACTIONS", "DrainHaproxy", "HaproxyParams", "UndrainHaproxy"]

import asyncio
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from agent.config_drain import HaproxyDrainConfig
from agent.config_types import Duration
from remediations.actions.base import ActionContext, ActionError, ActionResult
from remediations.actions.fields import params_as, positive
from remediations.haproxy import HaproxyError, RuntimeApi, ServerState

log = logging.getLogger(__name__)

_POLL = 0.25
"""Seconds between looks at the draining servers' sessions."""


class HaproxyParams(BaseModel):
    """Params of ``drain.haproxy`` / ``undrain.haproxy``; each unset one comes from the config.

    Attributes:
        socket: the runtime API (unix socket path or host:port).
        servers: this host's entries as backend/server.
        drain_timeout: how long drain waits for sessions to reach zero (drain only).
        maint_after_drain: put the servers in MAINT after the wait (drain only).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    socket: str | None = None
    servers: tuple[str, ...] | None = None
    drain_timeout: Duration | None = None
    maint_after_drain: bool | None = None

    @field_validator("socket", "servers")
    @classmethod
    def _like_the_config(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.field_name is not None:
            HaproxyDrainConfig.model_validate({info.field_name: value})
        return value

    @field_validator("drain_timeout")
    @classmethod
    def _positive(cls, value: timedelta | None) -> timedelta | None:
        return None if value is None else positive(value)


def _settings(ctx: ActionContext) -> HaproxyDrainConfig:
    params = params_as(ctx, HaproxyParams)
    overrides = params.model_dump(exclude_none=True)
    settings = ctx.services.drain.haproxy.model_copy(update=overrides)
    if not settings.servers:
        raise ActionError(
            "haproxy: no servers to act on; list this host's entries as backend/server in "
            "remediation.drain.haproxy.servers (or the step's servers param)"
        )
    return settings


def _api(settings: HaproxyDrainConfig) -> RuntimeApi:
    return RuntimeApi(settings.socket, timeout=settings.command_timeout.total_seconds())


async def _states(api: RuntimeApi, servers: tuple[str, ...]) -> dict[str, ServerState]:
    try:
        return await api.servers(servers)
    except HaproxyError as err:
        raise ActionError(str(err)) from err


def _describe(states: Mapping[str, ServerState]) -> str:
    return ", ".join(f"{n} ({s.admin}, {s.sessions} sessions)" for n, s in states.items())


class _HaproxyAction:
    """What both share: the params model, and a precheck that reaches HAProxy."""

    Params: ClassVar[type[BaseModel]] = HaproxyParams
    idempotent: ClassVar[bool] = True

    async def precheck(self, ctx: ActionContext) -> None:
        """Refuse when HAProxy cannot be reached or lacks one of the servers (named)."""
        settings = _settings(ctx)
        await _states(_api(settings), settings.servers)


class DrainHaproxy(_HaproxyAction):
    """Drains this host's servers (see the module docstring)."""

    name: ClassVar[str] = "drain.haproxy"
    disruptive: ClassVar[bool] = True

    async def apply(self, ctx: ActionContext) -> ActionResult:
        """Set DRAIN, wait for zero sessions or the deadline, then MAINT if configured.

        The wait is bounded by the step's timeout too, leaving time for the last commands.
        """
        settings = _settings(ctx)
        api = _api(settings)
        before = await _states(api, settings.servers)
        reserve = 2 * settings.command_timeout.total_seconds()
        wait = max(0.0, min(settings.drain_timeout.total_seconds(), ctx.timeout - reserve))
        then = ", then MAINT" if settings.maint_after_drain else ""
        if ctx.dry_run:
            return ActionResult(
                ok=True,
                summary=f"would set {_describe(before)} to DRAIN and wait up to {wait:g}s "
                f"for their sessions to reach 0{then}",
                details={"servers": _details(before), "wait": wait},
            )
        try:
            for server, state in before.items():
                if state.admin == "ready":
                    await api.set_state(server, "drain")
                    log.info("run %s: HAProxy server %s set to drain", ctx.run_id, server)
            left, waited = await _wait_for_sessions(api, settings.servers, wait)
            if settings.maint_after_drain:
                for server in settings.servers:
                    await api.set_state(server, "maint")
            after = await api.servers(settings.servers)
        except HaproxyError as err:
            raise ActionError(str(err)) from err
        open_sessions = {name: count for name, count in left.items() if count}
        if open_sessions:
            what = ", ".join(f"{n}: {c}" for n, c in open_sessions.items())
            outcome = f"the {wait:g}s deadline passed with sessions still open ({what})"
        else:
            outcome = f"their sessions reached 0 after {waited:.1f}s"
        return ActionResult(
            ok=True,
            summary=f"drained {', '.join(settings.servers)}: {outcome}{then and '; now MAINT'}",
            details={
                "before": _details(before),
                "after": _details(after),
                "waited": round(waited, 3),
                "deadline_passed": bool(open_sessions),
                "sessions_left": left,
            },
        )

    async def verify(self, ctx: ActionContext) -> ActionResult:
        """Every server is in DRAIN (or MAINT, with ``maint_after_drain``)."""
        settings = _settings(ctx)
        states = await _states(_api(settings), settings.servers)
        wanted = ("maint",) if settings.maint_after_drain else ("drain", "maint")
        wrong = {n: s for n, s in states.items() if s.admin not in wanted}
        if wrong:
            return ActionResult(
                ok=False,
                summary=f"not drained: {_describe(wrong)}",
                details={"servers": _details(states)},
            )
        return ActionResult(
            ok=True, summary=f"drained: {_describe(states)}", details={"servers": _details(states)}
        )


class UndrainHaproxy(_HaproxyAction):
    """Returns this host's servers to READY (see the module docstring)."""

    name: ClassVar[str] = "undrain.haproxy"
    disruptive: ClassVar[bool] = False

    async def apply(self, ctx: ActionContext) -> ActionResult:
        """Set every server not READY to READY."""
        settings = _settings(ctx)
        api = _api(settings)
        before = await _states(api, settings.servers)
        changing = [n for n, s in before.items() if s.admin != "ready"]
        if ctx.dry_run:
            what = ", ".join(changing) or "nothing (every server is READY)"
            return ActionResult(
                ok=True,
                summary=f"would set {what} to READY",
                details={"servers": _details(before)},
            )
        try:
            for server in changing:
                await api.set_state(server, "ready")
                log.info("run %s: HAProxy server %s set to ready", ctx.run_id, server)
        except HaproxyError as err:
            raise ActionError(str(err)) from err
        done = ", ".join(changing) or "nothing to do, every server was READY"
        return ActionResult(
            ok=True, summary=f"undrained: {done}", details={"before": _details(before)}
        )

    async def verify(self, ctx: ActionContext) -> ActionResult:
        """Every server is READY."""
        settings = _settings(ctx)
        states = await _states(_api(settings), settings.servers)
        wrong = {n: s for n, s in states.items() if s.admin != "ready"}
        summary = f"not READY: {_describe(wrong)}" if wrong else f"READY: {_describe(states)}"
        return ActionResult(ok=not wrong, summary=summary, details={"servers": _details(states)})


async def _wait_for_sessions(
    api: RuntimeApi, servers: tuple[str, ...], wait: float
) -> tuple[dict[str, int], float]:
    """Poll until every server has no current session or ``wait`` seconds passed.

    Returns:
        The sessions left per server, and the seconds waited.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        states = await api.servers(servers)
        left = {name: state.sessions or 0 for name, state in states.items()}
        waited = loop.time() - start
        if not any(left.values()) or waited >= wait:
            return left, waited
        await asyncio.sleep(min(_POLL, max(0.0, wait - waited)))


def _details(states: Mapping[str, ServerState]) -> dict[str, dict[str, Any]]:
    return {
        name: {"admin": state.admin, "admin_state": state.admin_state, "sessions": state.sessions}
        for name, state in states.items()
    }


ACTIONS = (DrainHaproxy, UndrainHaproxy)
