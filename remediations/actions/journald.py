"""``journal.vacuum``: shrink journald's archived files with ``journalctl --vacuum-*``.

It runs ``journalctl --vacuum-size=`` and/or ``--vacuum-time=`` (no shell, under a
timeout, see :mod:`remediations.actions.command`); in dry run it says the command.
journald only ever removes *archived* files, so the active ones stay whatever the limit.
"""

from __future__ import annotations

__all__ = ["ACTIONS", "JournalVacuumAction", "JournalVacuumParams"]

import asyncio
import logging
from datetime import timedelta
from typing import ClassVar

from pydantic import BaseModel, ByteSize, ConfigDict, field_validator, model_validator

from agent.config_types import Duration
from remediations.actions.base import ActionContext, ActionError, ActionResult
from remediations.actions.command import run_command, tail
from remediations.actions.fields import absolute_path, executable, params_as, positive

log = logging.getLogger(__name__)


class JournalVacuumParams(BaseModel):
    """Params of ``journal.vacuum``.

    Attributes:
        max_size: ``--vacuum-size``: shrink archived journal files to this much in total.
        max_age: ``--vacuum-time``: remove archived entries older than this.
        journalctl: the program to run.
        directory: ``--directory``: a journal directory other than the system's.
        timeout: how long journalctl may take.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_size: ByteSize | None = None
    max_age: Duration | None = None
    journalctl: str = "/usr/bin/journalctl"
    directory: str | None = None
    timeout: Duration = timedelta(seconds=60)

    _timeout_positive = field_validator("timeout")(positive)
    _paths_absolute = field_validator("journalctl", "directory")(absolute_path)

    @model_validator(mode="after")
    def _something_to_do(self) -> JournalVacuumParams:
        if self.max_size is None and self.max_age is None:
            raise ValueError("give max_size, max_age or both")
        if self.max_age is not None and self.max_age < timedelta(seconds=1):
            raise ValueError("max_age must be at least 1s")
        return self

    def argv(self) -> list[str]:
        """The journalctl command line."""
        argv = [self.journalctl]
        if self.directory is not None:
            argv.append(f"--directory={self.directory}")
        if self.max_size is not None:
            argv.append(f"--vacuum-size={int(self.max_size)}")
        if self.max_age is not None:
            argv.append(f"--vacuum-time={int(self.max_age.total_seconds())}s")
        return argv


class JournalVacuumAction:
    """Shrinks journald's archived files with ``journalctl --vacuum-*``."""

    name: ClassVar[str] = "journal.vacuum"
    disruptive: ClassVar[bool] = False
    idempotent: ClassVar[bool] = True
    Params: ClassVar[type[BaseModel]] = JournalVacuumParams

    async def precheck(self, ctx: ActionContext) -> None:
        """Refuse when journalctl is not an executable file."""
        program = params_as(ctx, JournalVacuumParams).journalctl
        if not await asyncio.to_thread(executable, program):
            raise ActionError(f"journal.vacuum: {program} is not an executable file")

    async def apply(self, ctx: ActionContext) -> ActionResult:
        """Run the vacuum (or in dry run, say the command)."""
        params = params_as(ctx, JournalVacuumParams)
        argv = params.argv()
        command = " ".join(argv)
        if ctx.dry_run:
            return ActionResult(ok=True, summary=f"would run {command}", details={"argv": argv})
        timeout = min(params.timeout.total_seconds(), ctx.timeout)
        try:
            outcome = await run_command(
                argv, env={"LANG": "C.UTF-8"}, time_limit=timeout, output_cap=16 * 1024
            )
        except OSError as err:
            raise ActionError(f"journal.vacuum: cannot run {argv[0]}: {err.strerror}") from err
        if outcome.returncode != 0:
            ended = "timed out" if outcome.timed_out else f"exited with {outcome.returncode}"
            raise ActionError(f"journal.vacuum: {command} {ended}: {tail(outcome.stderr)!r}")
        # journalctl reports what it freed on stderr ("Vacuuming done, freed 0B ...").
        report = tail(outcome.stderr + outcome.stdout, lines=1)
        log.info("journal.vacuum: %s: %s", command, report)
        return ActionResult(ok=True, summary=f"ran {command}: {report}", details=outcome.details())

    async def verify(self, ctx: ActionContext) -> ActionResult:
        """Nothing of its own to check: journalctl's exit status was the check."""
        return ActionResult(ok=True, summary="journal.vacuum: journalctl's exit was its check")


ACTIONS = (JournalVacuumAction,)
