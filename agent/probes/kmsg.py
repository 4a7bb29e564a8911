"""The kernel log probe: listens on ``/dev/kmsg`` and matches every new record.

The device is opened non-blocking, positioned at its current end (history before the
agent started is not replayed) and watched with ``loop.add_reader``, so records arrive
as the kernel logs them at no cost while the log is quiet. Records are matched by
:class:`~agent.probes.kmsg_match.KernelLogMatcher`.

A log flood stays bounded in CPU: at most ``max_lines_per_second`` records are
processed (a token bucket holding a tenth of a second's worth). When it runs dry the
probe stops reading, waits for the bucket to refill, then skips to the end of the log
without reading what it skipped; no buffer grows. The kernel's sequence numbers tell
exactly how many records were skipped (``reason="rate-limit"``) or overwritten in the
ring buffer before they were read (``reason="overwritten"``, a read failing with
``EPIPE``), counted in ``nodemedic_kernel_log_dropped_total`` as soon as the next
record arrives.
"""

from __future__ import annotations

__all__ = ["KmsgProbe", "KmsgReader", "LineBudget"]

import asyncio
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from agent.errors import ProbeError
from agent.model import Sample
from agent.probes.base import Clock, ProbeEvent, ProbeUpdate, next_beat
from agent.probes.kmsg_match import KernelLogMatcher, KernelPattern
from agent.probes.kmsg_record import (
    ContinuationJoiner,
    KmsgRecord,
    RecordSplitter,
    parse_record,
)

log = logging.getLogger(__name__)

LINES = "nodemedic_kernel_log_lines_total"
DROPPED = "nodemedic_kernel_log_dropped_total"
DROP_REASONS = ("rate-limit", "overwritten", "malformed")
_READ_SIZE = 16384
"""Bytes per read: more than the largest record the kernel hands out (8 KiB)."""
_READS_PER_WAKE = 64
"""Reads per readiness callback, so a busy log cannot hold the event loop."""
_FLOOD_QUIET = 5.0
"""Seconds without hitting the cap before a flood is logged as over (log on transitions)."""
_UPDATE_GAP = 0.1
"""Seconds between two updates at least."""
_SKIP_READS = 64
"""Reads a non-seekable stand-in (a FIFO) discards at most per skip ahead."""


class LineBudget:
    """A token bucket: ``rate`` lines per second, bursts of a tenth of a second's worth.

    Args:
        rate: lines per second (> 0).
        clock: monotonic seconds.
    """

    def __init__(self, rate: float, *, clock: Clock) -> None:
        self.rate = float(rate)
        self.capacity = max(1.0, self.rate / 10)
        self._tokens = self.capacity
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        """Spend one line's token; False when the bucket is empty."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def refill_delay(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self._tokens) / self.rate)


class KmsgReader:
    """A non-blocking reader of ``/dev/kmsg``, or of a FIFO standing in for it in tests.

    Args:
        path: the character device, or a FIFO (opened read-write, so it never reports
            end-of-file while no writer is connected).

    Raises:
        OSError: when the path cannot be opened, or is neither a character device nor a
            FIFO (``EINVAL``).
    """

    def __init__(self, path: Path) -> None:
        mode = path.stat().st_mode
        self.is_device = stat.S_ISCHR(mode)
        if not self.is_device and not stat.S_ISFIFO(mode):
            raise OSError(22, "not a character device or FIFO", str(path))
        access = os.O_RDONLY if self.is_device else os.O_RDWR
        self._fd = os.open(path, access | os.O_NONBLOCK | os.O_CLOEXEC)
        self._splitter = RecordSplitter()
        if self.is_device:
            os.lseek(self._fd, 0, os.SEEK_END)

    def fileno(self) -> int:
        """The file descriptor, for ``loop.add_reader``."""
        return self._fd

    def read(self) -> list[str]:
        """One read: the complete records it yields (``/dev/kmsg`` gives one per read).

        Raises:
            BlockingIOError: when nothing is waiting.
            BrokenPipeError: when records were overwritten before they were read; the
                next read continues with the oldest record still kept.
            EOFError: when the source closed.
            OSError: on any other read failure.
        """
        chunk = os.read(self._fd, _READ_SIZE)
        if not chunk:
            raise EOFError("end of file")
        records = self._splitter.feed(chunk)
        if self.is_device:
            records += self._splitter.flush()
        return records

    def flush(self) -> list[str]:
        """A record held back waiting for more lines: the source went quiet."""
        return self._splitter.flush()

    def skip_to_end(self) -> None:
        """Jump past everything logged so far without reading it."""
        if self.is_device:
            self._splitter.discard()
            os.lseek(self._fd, 0, os.SEEK_END)
            return
        # A stream cannot seek: discard what is waiting, and note whether that stopped
        # inside a line, whose tail must then be dropped too.
        mid_line = self._splitter.has_partial
        for _ in range(_SKIP_READS):
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            mid_line = not chunk.endswith(b"\n")
        self._splitter.discard(mid_line=mid_line)

    def close(self) -> None:
        """Close the file descriptor."""
        os.close(self._fd)


class KmsgProbe:
    """Reports kernel log pattern counts, conditions and events as the kernel logs them.

    Counts and conditions live in the probe, so they survive a restarted watch. Each
    update carries every pattern's ``nodemedic_kernel_pattern_matches``, each condition's
    ``nodemedic_kernel_condition``, and the line and drop counters.

    Args:
        patterns: compiled patterns, tried in order.
        interval: seconds between updates while the log is quiet (the heartbeat).
        timeout: seconds a single read may take (reads never block).
        path: ``/dev/kmsg``, or a FIFO in tests.
        max_lines_per_second: the flood cap; records beyond it are dropped and counted.
        clock: monotonic seconds, for windows, timeouts and the line budget.
    """

    name = "kmsg"

    def __init__(
        self,
        *,
        patterns: Sequence[KernelPattern],
        interval: float = 10.0,
        timeout: float = 10.0,
        path: Path = Path("/dev/kmsg"),
        max_lines_per_second: int = 1000,
        clock: Clock = time.monotonic,
    ) -> None:
        if interval <= 0 or timeout <= 0 or max_lines_per_second <= 0:
            raise ValueError("probe kmsg: interval, timeout and the line cap must be positive")
        self.interval = float(interval)
        self.timeout = float(timeout)
        self.path = path
        self.max_lines_per_second = max_lines_per_second
        self._clock = clock
        self._matcher = KernelLogMatcher(patterns, clock=clock)
        self._lines = 0
        self._dropped = dict.fromkeys(DROP_REASONS, 0)

    def watch(self) -> AsyncIterator[ProbeUpdate]:
        """Yield an update at once, then on every batch of records and every ``interval``.

        Raises:
            ProbeError: when the log cannot be opened or a read fails.
        """
        return self._watch()

    def close(self) -> None:
        """Nothing to release: each watch closes its own descriptor."""

    async def _watch(self) -> AsyncIterator[ProbeUpdate]:
        try:
            reader = KmsgReader(self.path)
        except OSError as err:
            raise ProbeError(f"probe kmsg: cannot open {self.path}: {_reason(err)}") from err
        loop = asyncio.get_running_loop()
        intake = _Intake(self, reader, loop)
        try:
            yield self._update(intake)
            reported = loop.time()
            while True:
                # A quiet log wakes the loop only at the heartbeat, which is on the polled
                # probes' grid (next_beat). Records that arrive within _UPDATE_GAP of the
                # last update are matched at once and reported together, so a busy log
                # costs the rules at most 1/_UPDATE_GAP evaluations a second.
                if await intake.wait(self._wait_time(loop.time())):
                    await asyncio.sleep(max(0.0, reported + _UPDATE_GAP - loop.time()))
                if intake.failure is not None:
                    raise ProbeError(f"probe kmsg: {intake.failure}")
                yield self._update(intake)
                reported = loop.time()
        finally:
            intake.close()

    def _wait_time(self, now: float) -> float:
        beat = next_beat(now, self.interval) - now
        deadline = self._matcher.next_deadline()
        if deadline is None:
            return beat
        return min(beat, max(0.01, deadline - self._clock()))

    def _update(self, intake: _Intake) -> ProbeUpdate:
        self._matcher.expire()
        samples = self._matcher.samples()
        samples.append(Sample.of(LINES, self._lines))
        samples += [Sample.of(DROPPED, n, reason=r) for r, n in self._dropped.items()]
        return ProbeUpdate(samples=samples, events=intake.take_events())

    def _count_dropped(self, reason: str, count: int) -> None:
        self._dropped[reason] += count


class _Intake:
    """One watch's reading: the reader callback, the line budget and pending events."""

    def __init__(self, probe: KmsgProbe, reader: KmsgReader, loop: asyncio.AbstractEventLoop):
        self._probe = probe
        self._reader = reader
        self._loop = loop
        self._budget = LineBudget(probe.max_lines_per_second, clock=probe._clock)
        self._joiner = ContinuationJoiner()
        self._wake = asyncio.Event()
        self._events: list[ProbeEvent] = []
        self._last_seq: int | None = None
        self._skipped = False
        self._flooding = False
        self._paused_at = 0.0
        self._resume: asyncio.TimerHandle | None = None
        self.failure: str | None = None
        loop.add_reader(reader.fileno(), self._on_readable)

    async def wait(self, seconds: float) -> bool:
        """Until records were processed or the read failed (True), or ``seconds`` passed."""
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            return False
        self._wake.clear()
        return True

    def take_events(self) -> list[ProbeEvent]:
        """The events raised since the last call."""
        events, self._events = self._events, []
        return events

    def close(self) -> None:
        """Stop reading and close the descriptor."""
        if self._resume is not None:
            self._resume.cancel()
        self._loop.remove_reader(self._reader.fileno())
        self._reader.close()

    def _on_readable(self) -> None:
        for _ in range(_READS_PER_WAKE):
            try:
                texts = self._reader.read()
            except BlockingIOError:
                self._process(self._reader.flush())
                self._process_joined(self._joiner.flush())
                if self._flooding and self._loop.time() - self._paused_at > _FLOOD_QUIET:
                    self._flooding = False
                    log.info("kernel log flood over")
                break
            except BrokenPipeError:
                continue  # records overwritten; the sequence gap counts them
            except (OSError, EOFError) as err:
                self._fail(f"cannot read {self._reader_path()}: {_reason(err)}")
                return
            if not self._process(texts):
                self._pause()
                break
        self._wake.set()

    def _process(self, texts: list[str]) -> bool:
        """Parse and match records; False when the budget ran out (the rest are dropped)."""
        probe = self._probe
        for text in texts:
            if not self._budget.take():
                return False
            try:
                record = parse_record(text)
            except ValueError as err:
                log.debug("probe kmsg: %s", err)
                probe._count_dropped("malformed", 1)
                continue
            if self._last_seq is not None and record.seq > self._last_seq + 1:
                reason = "rate-limit" if self._skipped else "overwritten"
                probe._count_dropped(reason, record.seq - self._last_seq - 1)
            self._skipped = False
            self._last_seq = record.seq
            probe._lines += 1
            self._process_joined(self._joiner.feed(record))
        return True

    def _process_joined(self, records: Sequence[KmsgRecord]) -> None:
        matcher = self._probe._matcher
        for record in records:
            self._events += matcher.feed(record)

    def _pause(self) -> None:
        if not self._flooding:
            self._flooding = True
            log.warning(
                "kernel log flood: over %d lines/s; skipping ahead, drops are counted in %s",
                self._probe.max_lines_per_second,
                DROPPED,
            )
        self._paused_at = self._loop.time()
        self._loop.remove_reader(self._reader.fileno())
        self._resume = self._loop.call_later(self._budget.refill_delay(), self._resume_reading)

    def _resume_reading(self) -> None:
        self._resume = None
        try:
            self._reader.skip_to_end()
        except OSError as err:
            self._fail(f"cannot skip ahead in {self._reader_path()}: {_reason(err)}")
            return
        self._skipped = True
        self._loop.add_reader(self._reader.fileno(), self._on_readable)

    def _fail(self, message: str) -> None:
        self.failure = message
        self._loop.remove_reader(self._reader.fileno())
        self._wake.set()

    def _reader_path(self) -> Path:
        return self._probe.path


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        hint = ""
        if err.errno in (1, 13):  # EPERM, EACCES
            hint = " (kernel.dmesg_restrict=1 lets only CAP_SYSLOG read the kernel log)"
        return err.strerror + hint
    return str(err) or type(err).__name__
