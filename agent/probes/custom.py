"""Custom checks: run Nagios-style plugins and export their status and performance data.

Each check runs its ``command`` (an argv, never through a shell) on its own interval, in
a new session (its own process group), with stdin from /dev/null, ``/`` as its working
directory and only ``PATH``, ``LC_ALL=C`` and the variables its ``env`` allowlist names.
Its stdout is kept up to ``max_output`` bytes (the rest is read and dropped, so a chatty
plugin is not blocked on a full pipe). When the plugin exits, or overstays its timeout,
its whole process group is killed: a plugin that forks a child that hangs leaves nothing
behind. A timeout is UNKNOWN; so is an exit code outside 0-3.

The exit status becomes ``nodemedic_custom_check_status{check}`` and each perfdata item
``nodemedic_custom_check_perfdata{check,label,uom}`` (``uom`` is ``none`` for a plain
number). Malformed items are skipped, counted in
``nodemedic_custom_check_perfdata_errors_total{check}`` and logged when they change.
"""

from __future__ import annotations

__all__ = ["DEFAULT_PATH", "CustomCheck", "CustomProbe"]

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.model import Sample
from agent.probes.base import Clock
from agent.probes.checks import CheckOutcome, ScheduledChecks
from agent.probes.nagios import NagiosStatus, parse_plugin_output

if TYPE_CHECKING:
    from agent.config import CustomProbeConfig

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""``PATH`` a plugin gets unless its ``env`` allowlist passes the agent's own."""

_STDERR_CAP = 4096
_PIPE_GRACE = 0.5
"""Seconds the pipes may stay open after the plugin exited (a child still holding them)."""
_REAP_WAIT = 2.0
"""Seconds to wait for a killed plugin to be reaped."""
_TEXT_CAP = 256
"""Characters of the plugin's text line kept in reasons and events."""


@dataclass(frozen=True, slots=True)
class CustomCheck:
    """One plugin, ready to run.

    Attributes:
        name: the ``check`` label.
        interval: seconds between runs.
        timeout: seconds a run may take before its process group is killed.
        command: the argv; ``command[0]`` is an absolute path.
        max_output: bytes of stdout kept.
        env: the plugin's whole environment.
    """

    name: str
    interval: float
    timeout: float
    command: tuple[str, ...]
    max_output: int = 16 * 1024
    env: Mapping[str, str] = field(default_factory=lambda: {"PATH": DEFAULT_PATH, "LC_ALL": "C"})


@dataclass(frozen=True, slots=True)
class _PluginRun:
    exit_code: int | None = None
    stdout: bytes = b""
    truncated: bool = False
    stderr: bytes = b""
    timed_out: bool = False
    error: str | None = None


class _Capture:
    """Keeps the first ``limit`` bytes of a stream and drains the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    async def drain(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(65536):
            room = max(0, self.limit - len(self.data))
            self.data += chunk[:room]
            self.dropped += max(0, len(chunk) - room)


class CustomProbe(ScheduledChecks[CustomCheck]):
    """The ``custom`` probe: Nagios plugins, each on its own interval.

    Args:
        checks: the checks.
        interval: the longest gap between two updates (the checks' default interval).
        timeout: the longest a check may take.
        clock: monotonic seconds, for durations.
    """

    EVENT_PREFIX = "io.nodemedic.custom_check"

    def __init__(
        self,
        checks: Sequence[CustomCheck],
        *,
        interval: float = 10.0,
        timeout: float = 10.0,
        clock: Clock = time.perf_counter,
    ) -> None:
        super().__init__(
            name="custom", interval=interval, timeout=timeout, checks=checks, clock=clock
        )
        self._perf_errors: Counter[str] = Counter()
        self._problems: dict[str, tuple[str, ...]] = {}
        self._perfdata: dict[str, list[Sample]] = {}

    @classmethod
    def from_config(
        cls, config: CustomProbeConfig, *, environ: Mapping[str, str] | None = None
    ) -> CustomProbe:
        """The probe for the ``probes.custom`` section; ``env`` names are read from ``environ``."""
        source = os.environ if environ is None else environ
        default = config.interval.total_seconds()
        checks = []
        for entry in config.checks:
            interval, timeout = entry.seconds(default)
            env = {"PATH": DEFAULT_PATH, "LC_ALL": "C"}
            env.update({name: source[name] for name in entry.env if name in source})
            checks.append(
                CustomCheck(
                    name=entry.name,
                    interval=interval,
                    timeout=timeout,
                    command=entry.command,
                    max_output=int(entry.max_output),
                    env=env,
                )
            )
        longest = max((check.timeout for check in checks), default=config.effective_timeout)
        return cls(checks, interval=default, timeout=longest)

    async def run_check(self, check: CustomCheck) -> CheckOutcome:
        """Run the plugin once and turn its exit status and output into samples."""
        started = self._clock()
        run = await _run_plugin(check)
        duration = self._clock() - started
        if run.error is not None:
            return self._unknown(check, run.error, duration, exit_code=None)
        if run.timed_out or run.exit_code is None:
            reason = f"timed out after {check.timeout:g}s; its process group was killed"
            return self._unknown(check, reason, duration, exit_code=None)
        code = run.exit_code
        status = NagiosStatus.of_exit_code(code)
        stdout = run.stdout.decode("utf-8", errors="replace")
        if run.truncated and "\n" in stdout:
            stdout = stdout[: stdout.rindex("\n")]  # the cut line may end mid-item
        output = parse_plugin_output(stdout)
        self._count_problems(check, output.problems)
        perfdata = [
            Sample.of(
                "nodemedic_custom_check_perfdata",
                item.value,
                check=check.name,
                label=item.label,
                uom=item.uom or "none",
            )
            for item in output.perfdata
            if item.value is not None
        ]
        self._perfdata[check.name] = perfdata
        text = output.text[:_TEXT_CAP]
        reason = ""
        if not 0 <= code <= 3:
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            reason = f"{how} (not a Nagios status)"
        if status is not NagiosStatus.OK:
            stderr = run.stderr.decode("utf-8", errors="replace").strip().partition("\n")[0]
            detail = text or stderr[:_TEXT_CAP] or "no output"
            reason = f"{reason}: {detail}" if reason else detail
        return self._outcome(
            check,
            status=status,
            reason=reason,
            duration=duration,
            perfdata=perfdata,
            exit_code=code,
            text=text,
        )

    def overstayed(self, check: CustomCheck, detail: str, elapsed: float) -> CheckOutcome:
        """UNKNOWN: the run overstayed its timeout or raised a bug."""
        return self._unknown(check, detail, elapsed, exit_code=None)

    # -- results --------------------------------------------------------------------

    def _unknown(
        self, check: CustomCheck, reason: str, duration: float, *, exit_code: int | None
    ) -> CheckOutcome:
        # Perfdata of the last completed run is kept: a run that could not finish says
        # nothing new about the values, and their conditions should not resolve.
        perfdata = self._perfdata.get(check.name, [])
        return self._outcome(
            check,
            status=NagiosStatus.UNKNOWN,
            reason=reason,
            duration=duration,
            perfdata=perfdata,
            exit_code=exit_code,
            text="",
        )

    def _outcome(
        self,
        check: CustomCheck,
        *,
        status: NagiosStatus,
        reason: str,
        duration: float,
        perfdata: list[Sample],
        exit_code: int | None,
        text: str,
    ) -> CheckOutcome:
        samples = [
            Sample.of("nodemedic_custom_check_status", int(status), check=check.name),
            Sample.of("nodemedic_custom_check_duration_seconds", duration, check=check.name),
            Sample.of(
                "nodemedic_custom_check_perfdata_errors_total",
                self._perf_errors[check.name],
                check=check.name,
            ),
            *perfdata,
        ]
        data = {"status": status.name, "exit_code": exit_code, "output": text}
        return CheckOutcome(
            samples,
            status.name.lower(),
            healthy=status is NagiosStatus.OK,
            reason=reason,
            data=data,
        )

    def _count_problems(self, check: CustomCheck, problems: tuple[str, ...]) -> None:
        self._perf_errors[check.name] += len(problems)
        if problems == self._problems.get(check.name, ()):
            if problems:
                log.debug("check custom/%s: malformed perfdata again", check.name)
            return
        self._problems[check.name] = problems
        if problems:
            log.warning(
                "check custom/%s: ignored %d malformed perfdata items: %s",
                check.name,
                len(problems),
                "; ".join(problems[:5]),
                extra={"NODEMEDIC_PROBE": self.name, "NODEMEDIC_CHECK": check.name},
            )


async def _run_plugin(check: CustomCheck) -> _PluginRun:
    """Run the plugin under its timeout; kill its process group whatever happens."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + check.timeout
    protocol = _PluginProtocol(loop)
    try:
        transport, _ = await loop.subprocess_exec(
            lambda: protocol,
            *check.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(check.env),
            cwd="/",
            start_new_session=True,
        )
    except OSError as err:
        return _PluginRun(error=f"cannot run {check.command[0]}: {err.strerror or err}")
    proc = asyncio.subprocess.Process(transport, protocol, loop)
    out, err_out = _Capture(check.max_output), _Capture(_STDERR_CAP)
    readers = [
        asyncio.create_task(out.drain(proc.stdout), name=f"check:custom:{check.name}:stdout"),
        asyncio.create_task(err_out.drain(proc.stderr), name=f"check:custom:{check.name}:stderr"),
    ]
    timed_out = False
    try:
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.shield(protocol.exited)
        except TimeoutError:
            timed_out = True
        else:
            # A child the plugin left behind may still hold the pipes: wait only briefly.
            await asyncio.wait(readers, timeout=_PIPE_GRACE)
    finally:
        _kill_group(proc.pid)
        for reader in readers:
            reader.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_REAP_WAIT):
                await asyncio.wait(readers)
                await proc.wait()
    return _PluginRun(
        exit_code=None if timed_out else proc.returncode,
        stdout=bytes(out.data),
        truncated=out.dropped > 0,
        stderr=bytes(err_out.data),
        timed_out=timed_out,
    )


class _PluginProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """The standard stream protocol, plus a future set the moment the plugin exits.

    ``Process.wait()`` also waits for the pipes to close, which a child the plugin left
    behind can hold open for as long as it lives.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=2**16, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


def _kill_group(pgid: int) -> None:
    # The plugin leads its own session, so its process group id is its pid; the group
    # outlives the plugin while any child is left in it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
