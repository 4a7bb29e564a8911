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


class _CappedPipe:
    """The read end of a child's output pipe, read by the loop, keeping the last ``cap`` bytes.

    The pipe is ours rather than asyncio's so that the process's exit can be awaited
    apart from its output, and the pipe closed while a runaway grandchild still holds it.
    """

    def __init__(self, fd: int, cap: int) -> None:
        self._fd = fd
        self._cap = cap
        self.kept = bytearray()
        self.dropped = 0
        self._loop = asyncio.get_running_loop()
        self.eof: asyncio.Future[None] = self._loop.create_future()
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self._fd, _CHUNK)
        except BlockingIOError:
            return
        if not chunk:
            self._loop.remove_reader(self._fd)
            if not self.eof.done():
                self.eof.set_result(None)
            return
        self.kept += chunk
        if len(self.kept) > self._cap:
            excess = len(self.kept) - self._cap
            self.dropped += excess
            del self.kept[:excess]

    def close(self) -> None:
        """Stop reading and close the read end."""
        self._loop.remove_reader(self._fd)
        os.close(self._fd)

    def text(self) -> str:
        """What was kept, decoded leniently."""
        return self.kept.decode(errors="replace")


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
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    pipes = (_CappedPipe(out_read, output_cap), _CappedPipe(err_read, output_cap))
    try:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_write,
                stderr=err_write,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            os.close(out_write)
            os.close(err_write)
        return await _supervise(proc, argv, pipes, time_limit)
    finally:
        for pipe in pipes:
            pipe.close()


async def _supervise(
    proc: asyncio.subprocess.Process,
    argv: Sequence[str],
    pipes: tuple[_CappedPipe, _CappedPipe],
    time_limit: float,
) -> CommandOutcome:
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
        # A process that left the group (setsid) may hold the pipes: read only a moment.
        await asyncio.wait([pipe.eof for pipe in pipes], timeout=_DRAIN_SECONDS)
    except BaseException:
        # Cancelled (the step's own timeout): no process of the group survives the step.
        _kill_group(proc.pid)
        raise
    out, err = pipes
    return CommandOutcome(
        argv=tuple(argv),
        returncode=None if timed_out else proc.returncode,
        stdout=out.text(),
        stderr=err.text(),
        stdout_dropped=out.dropped,
        stderr_dropped=err.dropped,
        timed_out=timed_out,
        leftovers_killed=leftovers and not timed_out,
    )
