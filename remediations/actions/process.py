"""``process.signal``: stop the processes of a process group (TERM, a grace, then KILL).

The step's ``match`` names the processes as the process-groups probe does (see
:class:`~remediations.actions.processes.ProcessMatch`). PID 1, the agent, its parent and
every PID in ``ActionServices.protected_pids`` are never signalled: a match that
includes one is refused before anything is sent, as is one naming more than
``max_processes``.

Signals go through a pidfd (``pidfd_open`` + ``pidfd_send_signal``): the pidfd is opened,
then the process's start time is compared with the one listed; a PID reused in between
fails that check and is left alone, and once the pidfd is open it can only ever signal
that process. Survivors of the grace period get ``SIGKILL`` the same way. ``verify``
checks that none of the signalled processes still runs.
"""

from __future__ import annotations

__all__ = ["ACTIONS", "ProcessSignalAction", "ProcessSignalParams", "SignalledProcess"]

import asyncio
import logging
import os
import signal
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.config_types import Duration
from remediations.actions.base import ActionContext, ActionError, ActionResult
from remediations.actions.fields import params_as
from remediations.actions.processes import (
    ProcessMatch,
    ProcessRef,
    ProcessTable,
    resolve_group,
)

log = logging.getLogger(__name__)


class ProcessSignalParams(BaseModel):
    """Params of ``process.signal``.

    Attributes:
        match: which processes (``group``, ``comm``, ``cmdline``, ``pidfile``, ``user``,
            ``unit``, ``pids``; all given must hold).
        signal: the first signal, ``TERM`` by default.
        grace: how long they have to exit before ``SIGKILL``.
        kill: send ``SIGKILL`` to survivors of the grace (else the step fails).
        max_processes: refuse a match naming more processes than this.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: ProcessMatch
    signal: Literal["TERM", "INT", "QUIT", "HUP", "KILL"] = "TERM"
    grace: Duration = timedelta(seconds=10)
    kill: bool = True
    max_processes: int = Field(default=64, ge=1, le=10_000)

    @field_validator("grace")
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("grace must not be negative")
        return value


class SignalledProcess:
    """A process held by its pidfd once its start time matched the listed one.

    Use :meth:`open`; close it when done.
    """

    def __init__(self, ref: ProcessRef, pidfd: int) -> None:
        self.ref = ref
        self._pidfd = pidfd

    @classmethod
    def open(cls, ref: ProcessRef, table: ProcessTable) -> SignalledProcess | None:
        """Hold ``ref``'s process, or None when it exited or its PID now is another's."""
        try:
            pidfd = os.pidfd_open(ref.pid)
        except ProcessLookupError:
            return None
        fields = table.stat(ref.pid)
        if fields is None or fields.starttime != ref.starttime:
            os.close(pidfd)
            return None
        return cls(ref, pidfd)

    def send(self, signum: int) -> bool:
        """Send ``signum``; False when the process has already exited."""
        try:
            signal.pidfd_send_signal(self._pidfd, signum)
        except ProcessLookupError:
            return False
        return True

    async def exited(self) -> None:
        """Return when the process exits (its pidfd turns readable)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not done.done():
                done.set_result(None)

        loop.add_reader(self._pidfd, readable)
        try:
            await done
        finally:
            loop.remove_reader(self._pidfd)

    def close(self) -> None:
        """Release the pidfd."""
        os.close(self._pidfd)


class ProcessSignalAction:
    """Signals the processes of a process group (module docstring).

    Args:
        table: where processes are read from (``/proc`` and the cgroup tree).
    """

    name: ClassVar[str] = "process.signal"
    disruptive: ClassVar[bool] = True
    idempotent: ClassVar[bool] = False
    Params: ClassVar[type[BaseModel]] = ProcessSignalParams

    def __init__(self, *, table: ProcessTable | None = None) -> None:
        self._table = table or ProcessTable()
        self._signalled: dict[str, tuple[ProcessRef, ...]] = {}

    async def precheck(self, ctx: ActionContext) -> None:
        """Refuse a match that includes a protected process or too many processes."""
        await self._targets(ctx)

    async def apply(self, ctx: ActionContext) -> ActionResult:
        """Signal them, wait out the grace, KILL survivors (dry run: list them)."""
        params = params_as(ctx, ProcessSignalParams)
        refs = await self._targets(ctx)
        listed = [{"pid": r.pid, "name": r.name} for r in refs]
        what = params.match.describe()
        if ctx.dry_run:
            then = f", SIGKILL after {params.grace}" if params.kill else ""
            return ActionResult(
                ok=True,
                summary=f"would send SIG{params.signal} to {len(refs)} processes "
                f"({what}){then}: {_pids(refs)}",
                details={"processes": listed, "signal": params.signal},
            )
        held = [p for r in refs if (p := SignalledProcess.open(r, self._table)) is not None]
        try:
            self._signalled[ctx.run_id] = tuple(p.ref for p in held)
            return await self._stop(ctx, params, held, refs)
        finally:
            for process in held:
                process.close()

    async def verify(self, ctx: ActionContext) -> ActionResult:
        """None of the signalled processes still runs (without a record: none matches)."""
        refs = self._signalled.pop(ctx.run_id, None)
        if refs is None:
            params = params_as(ctx, ProcessSignalParams)
            try:
                refs = tuple(
                    await asyncio.to_thread(self._find, params.match, ctx.services.process_groups)
                )
            except ActionError as err:
                # The pidfile or the unit's cgroup is gone with its processes.
                return ActionResult(ok=True, summary=f"no process matches: {err}")
        remaining = [r for r in refs if self._table.alive(r)]
        return ActionResult(
            ok=not remaining,
            summary=f"{len(remaining)} of {len(refs)} processes still run"
            + (f": {_pids(remaining)}" if remaining else ""),
            details={"remaining": [r.pid for r in remaining]},
        )

    async def _stop(
        self,
        ctx: ActionContext,
        params: ProcessSignalParams,
        held: Sequence[SignalledProcess],
        refs: Sequence[ProcessRef],
    ) -> ActionResult:
        first = getattr(signal, f"SIG{params.signal}")
        sent = [p for p in held if p.send(first)]
        log.info(
            "run %s: SIG%s to %s (%s)",
            ctx.run_id,
            params.signal,
            _pids(p.ref for p in sent),
            params.match.describe(),
        )
        grace = min(params.grace.total_seconds(), max(0.0, ctx.timeout - 1.0))
        survivors = await _wait_exit(sent, grace)
        killed = []
        if survivors and params.kill and first != signal.SIGKILL:
            killed = [p for p in survivors if p.send(signal.SIGKILL)]
            log.info(
                "run %s: SIGKILL to %s after the grace", ctx.run_id, _pids(p.ref for p in killed)
            )
            # SIGKILL cannot be ignored, but exiting still takes a moment (memory to free).
            survivors = await _wait_exit(killed, max(1.0, ctx.timeout - grace))
        details = {
            "signalled": [p.ref.pid for p in sent],
            "killed": [p.ref.pid for p in killed],
            "gone_before": sorted({r.pid for r in refs} - {p.ref.pid for p in sent}),
            "remaining": [p.ref.pid for p in survivors],
        }
        if survivors:
            raise ActionError(
                f"process.signal: {_pids(p.ref for p in survivors)} still run after "
                f"SIG{params.signal}" + (" and SIGKILL" if killed else "")
            )
        return ActionResult(
            ok=True,
            summary=f"stopped {len(sent)} processes ({params.match.describe()})"
            + (f", {len(killed)} with SIGKILL" if killed else ""),
            details=details,
        )

    async def _targets(self, ctx: ActionContext) -> list[ProcessRef]:
        params = params_as(ctx, ProcessSignalParams)
        refs = await asyncio.to_thread(self._find, params.match, ctx.services.process_groups)
        protected = {1, os.getpid(), os.getppid()} | set(ctx.services.protected_pids)
        refused = [r for r in refs if r.pid in protected]
        if refused:
            raise ActionError(
                f"process.signal: {params.match.describe()} includes protected processes "
                f"{_pids(refused)} (PID 1, the agent, its parent and the configured "
                "protected PIDs are never signalled)"
            )
        if len(refs) > params.max_processes:
            raise ActionError(
                f"process.signal: {params.match.describe()} matches {len(refs)} processes, "
                f"more than max_processes={params.max_processes}"
            )
        return refs

    def _find(self, match: ProcessMatch, groups: Mapping[str, ProcessMatch]) -> list[ProcessRef]:
        try:
            refs = self._table.find(resolve_group(match, groups))
            rest = match.criteria if match.group is not None else None
            if rest is not None:
                also = set(self._table.find(rest))
                refs = [ref for ref in refs if ref in also]
        except OSError as err:
            raise ActionError(f"process.signal: {err.filename}: {err.strerror}") from err
        except ValueError as err:
            raise ActionError(f"process.signal: {err}") from err
        return refs


async def _wait_exit(
    processes: Sequence[SignalledProcess], seconds: float
) -> list[SignalledProcess]:
    """Wait up to ``seconds`` for ``processes`` to exit; returns those still running."""
    if not processes:
        return []
    waits = {asyncio.create_task(p.exited(), name=f"exit:{p.ref.pid}"): p for p in processes}
    _, pending = await asyncio.wait(waits, timeout=seconds)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return [waits[task] for task in pending]


def _pids(refs: Iterable[ProcessRef]) -> str:
    return ", ".join(f"{r.pid} ({r.name})" for r in refs) or "none"


ACTIONS = (ProcessSignalAction,)
