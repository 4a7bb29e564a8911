"""Running a program for an action: no shell, a timeout that kills its whole process group.

:func:`run_command` is what ``exec`` and ``journal.vacuum`` run through. The child starts
in a session of its own, so on timeout one ``SIGKILL`` to the group also ends whatever it
forked. When the program exits, members of its group still running are killed too: an
action's command never leaves processes behind. Output is captured per stream up to a
cap, keeping the tail (the end of stderr says why a command failed).
"""

from __future__ import annotations

__all__ = ["CommandOutcome", "run_command", "tail"]

import asyncio
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
# After the program exited (or was killed), how long its pipes may stay open: a process
# that left the group with setsid() can hold them, and nothing may wait on it forever.
_DRAIN_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """How a command ended.

    Attributes:
        argv: what was run.
        returncode: the exit status, negative for a signal; None when it timed out.
        stdout: the captured stdout (its last ``output_cap`` bytes), decoded leniently.
        stderr: the captured stderr, likewise.
        stdout_dropped: bytes of stdout beyond the cap that were not kept.
        stderr_dropped: bytes of stderr beyond the cap that were not kept.
        timed_out: the timeout expired and the process group was killed.
        leftovers_killed: processes of its group outlived it and were killed.
    """

    argv: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str
    stdout_dropped: int
    stderr_dropped: int
    timed_out: bool
    leftovers_killed: bool

    def details(self) -> dict[str, object]:
        """The outcome as JSON-able facts for a result's details."""
        return {
            "argv": list(self.argv),
            "returncode": self.returncode,
            "timed_out": self.timed_out,
            "leftovers_killed": self.leftovers_killed,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "stdout_dropped": self.stdout_dropped,
            "stderr_dropped": self.stderr_dropped,
        }


def tail(text: str, *, lines: int = 10, chars: int = 2000) -> str:
    """The last ``lines`` lines of ``text``, at most ``chars`` characters of them."""
    kept = "\n".join(text.rstrip("\n").splitlines()[-lines:])
    return kept[-chars:]


async def _read_capped(stream: asyncio.StreamReader, cap: int) -> tuple[bytes, int]:
    kept = bytearray()
    dropped = 0
    while chunk := await stream.read(_CHUNK):
        kept += chunk
        if len(kept) > cap:
            excess = len(kept) - cap
            dropped += excess
            del kept[:excess]
    return bytes(kept), dropped


def _kill_group(pgid: int) -> bool:
    """SIGKILL every process in group ``pgid``; True when there was one to kill."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


async def run_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    time_limit: float,
    output_cap: int,
    cwd: str = "/",
) -> CommandOutcome:
    """Run ``argv`` (``argv[0]`` an absolute path) with exactly ``env`` for ``time_limit`` seconds.

    Raises:
        OSError: when the program cannot be started (missing, not executable).
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
    )
    assert proc.stdout is not None  # noqa: S101 - PIPE was asked for
    assert proc.stderr is not None  # noqa: S101
    readers = (
        asyncio.create_task(_read_capped(proc.stdout, output_cap), name=f"stdout:{proc.pid}"),
        asyncio.create_task(_read_capped(proc.stderr, output_cap), name=f"stderr:{proc.pid}"),
    )
    timed_out = False
    try:
        try:
            async with asyncio.timeout(time_limit):
                await proc.wait()
        except TimeoutError:
            timed_out = True
            log.warning("%s: no exit in %.1fs, killing its process group", argv[0], time_limit)
        # The group outlives its leader while any member runs, so its id cannot be reused.
        leftovers = _kill_group(proc.pid)
        await proc.wait()
        _, pending = await asyncio.wait(readers, timeout=_DRAIN_SECONDS)
    finally:
        # Also on cancellation: kill the group and stop reading.
        _kill_group(proc.pid)
        for reader in readers:
            reader.cancel()
    outputs = [reader.result() if reader not in pending else (b"", 0) for reader in readers]
    (out, out_dropped), (err, err_dropped) = outputs
    return CommandOutcome(
        argv=tuple(argv),
        returncode=None if timed_out else proc.returncode,
        stdout=out.decode(errors="replace"),
        stderr=err.decode(errors="replace"),
        stdout_dropped=out_dropped,
        stderr_dropped=err_dropped,
        timed_out=timed_out,
        leftovers_killed=leftovers and not timed_out,
    )
