"""``exec``: run an operator's program as a step, without a shell.

The program gets only the environment it is allowed (an allowlist of the agent's
variables plus variables set in the step); everything else is stripped. It runs under a
timeout that kills its whole process group, its output is captured up to a cap to the log
and into the result, and a nonzero exit fails the step with the exit code and the tail of
stderr. Whether the step is disruptive or idempotent is the playbook's call (params), with
the safe defaults: disruptive, not idempotent.
"""

from __future__ import annotations

__all__ = ["ACTIONS", "ExecAction", "ExecParams"]

import asyncio
import logging
import os
import re
import shlex
from datetime import timedelta
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator

from agent.config_types import Duration
from remediations.actions.base import ActionContext, ActionError, ActionResult
from remediations.actions.command import CommandOutcome, run_command, tail
from remediations.actions.fields import absolute_path, executable, params_as, positive

log = logging.getLogger(__name__)

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not an environment variable name")
    return value


class ExecParams(BaseModel):
    """Params of ``exec``.

    Attributes:
        argv: the program (an absolute path) and its arguments; no shell is involved.
        env_allow: variables passed through from the agent's environment when set there.
        env: variables set for the program (they win over passed-through ones).
        cwd: its working directory (absolute).
        timeout: how long it may run; the step's own timeout also bounds it.
        output_cap: bytes kept per stream (the tail); the rest is counted and dropped.
        disruptive: it can interrupt a workload (gates treat it as such).
        idempotent: running it twice is the same as once (a crash may resume it).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    argv: tuple[str, ...] = Field(min_length=1)
    env_allow: tuple[str, ...] = ("PATH", "LANG", "LC_ALL", "TZ")
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str = "/"
    timeout: Duration = timedelta(seconds=30)
    output_cap: ByteSize = Field(default=ByteSize(64 * 1024), ge=1024, le=16 * 1024 * 1024)
    disruptive: bool = True
    idempotent: bool = False

    @field_validator("argv")
    @classmethod
    def _program_absolute(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        absolute_path(value[0])
        if any("\0" in arg for arg in value):
            raise ValueError("arguments must not contain NUL")
        return value

    @field_validator("env_allow")
    @classmethod
    def _allow_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_env_name(name) for name in value)

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            _env_name(name)
            if "\0" in text:
                raise ValueError(f"env {name}: a value must not contain NUL")
        return value

    @field_validator("cwd")
    @classmethod
    def _cwd_absolute(cls, value: str) -> str:
        return absolute_path(value)

    _timeout_positive = field_validator("timeout")(positive)


def _environment(params: ExecParams) -> dict[str, str]:
    passed = {name: os.environ[name] for name in params.env_allow if name in os.environ}
    return {**passed, **params.env}


class ExecAction:
    """Runs a program (see the module docstring)."""

    name: ClassVar[str] = "exec"
    disruptive: ClassVar[bool] = True
    """The default; a step's ``disruptive`` param says what it is for that step."""
    idempotent: ClassVar[bool] = False
    """The default; a step's ``idempotent`` param says what it is for that step."""
    Params: ClassVar[type[BaseModel]] = ExecParams

    async def precheck(self, ctx: ActionContext) -> None:
        """Refuse a program that is missing, not a regular file or not executable."""
        params = params_as(ctx, ExecParams)
        program = params.argv[0]
        if not await asyncio.to_thread(executable, program):
            raise ActionError(f"exec: {program} is not an executable file")
        if not await asyncio.to_thread(Path(params.cwd).is_dir):
            raise ActionError(f"exec: working directory {params.cwd} does not exist")

    async def apply(self, ctx: ActionContext) -> ActionResult:
        """Run it; a nonzero exit or a timeout raises :class:`ActionError`."""
        params = params_as(ctx, ExecParams)
        env = _environment(params)
        timeout = min(params.timeout.total_seconds(), ctx.timeout)
        command = shlex.join(params.argv)
        plan = {"argv": list(params.argv), "env": sorted(env), "cwd": params.cwd}
        if ctx.dry_run:
            return ActionResult(
                ok=True,
                summary=f"would run {command} (env {', '.join(sorted(env)) or 'empty'}, "
                f"timeout {timeout:g}s)",
                details={**plan, "timeout": timeout},
            )
        try:
            outcome = await run_command(
                params.argv,
                env=env,
                time_limit=timeout,
                output_cap=params.output_cap,
                cwd=params.cwd,
            )
        except OSError as err:
            raise ActionError(f"exec: cannot start {params.argv[0]}: {err.strerror}") from err
        _log_outcome(ctx, outcome)
        if outcome.timed_out:
            raise ActionError(
                f"exec: {command} did not finish within {timeout:g}s and was killed; "
                f"stderr: {tail(outcome.stderr)!r}"
            )
        if outcome.returncode != 0:
            raise ActionError(
                f"exec: {command} exited with {outcome.returncode}; "
                f"stderr: {tail(outcome.stderr)!r}"
            )
        return ActionResult(
            ok=True, summary=f"ran {command}: exit 0", details={**plan, **outcome.details()}
        )

    async def verify(self, ctx: ActionContext) -> ActionResult:
        """Nothing of its own to check: the exit status was the check."""
        return ActionResult(ok=True, summary="exec: the exit status was its check")


def _log_outcome(ctx: ActionContext, outcome: CommandOutcome) -> None:
    log.info(
        "run %s: %s exited %s%s",
        ctx.run_id,
        outcome.argv[0],
        "on timeout" if outcome.timed_out else outcome.returncode,
        ", leftover processes killed" if outcome.leftovers_killed else "",
    )
    for stream, text, dropped in (
        ("stdout", outcome.stdout, outcome.stdout_dropped),
        ("stderr", outcome.stderr, outcome.stderr_dropped),
    ):
        if text:
            log.info("run %s: %s (%d bytes dropped):\n%s", ctx.run_id, stream, dropped, text)


ACTIONS = (ExecAction,)
