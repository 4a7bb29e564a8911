"""The probe contract and the base class that runs blocking reads off the event loop.

A :class:`BlockingProbe` owns one worker thread. ``sample()`` hands ``collect()`` to that
thread under a timeout; a run that overstays is abandoned (a thread stuck in ``statvfs``
on a dead NFS server cannot be interrupted) and the probe refuses to start another until
it returns, so one hung mount costs one thread, never one per interval.

The exception is a probe whose type sets :attr:`BlockingProbe.inline`: it reads only
system-wide counters the kernel generates in memory when they are read (``/proc/stat``,
``/proc/meminfo``, ``/proc/pressure/*``, ``adjtimex``...), which wait on no device, no
network and no lock a slow driver holds, so ``collect()`` runs on the event loop itself.
The hand-off to a thread and back costs more CPU (110-180 us) than most such readings.
Every inline run is timed; :data:`INLINE_STRIKES` runs in a row longer than
:data:`INLINE_LIMIT` (or one longer than the probe's timeout) move that probe back to its
thread for good, with one warning.
"""

from __future__ import annotations

__all__ = [
    "INLINE_LIMIT",
    "INLINE_STRIKES",
    "AnyProbe",
    "BlockingProbe",
    "Clock",
    "Probe",
    "ProbeEvent",
    "ProbeUpdate",
    "ProcfsProbe",
    "PushProbe",
    "is_push",
    "next_beat",
    "parse_error",
    "read_text",
    "sample_once",
]

import abc
import asyncio
import concurrent.futures
import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeGuard, cast

import psutil

from agent.errors import ProbeError, ProbeTimeoutError
from agent.model import Sample
from agent.probes.proc_files import KernelFiles

log = logging.getLogger(__name__)

Clock = Callable[[], float]
"""Monotonic seconds; injected so tests control elapsed time."""

INLINE_LIMIT = 0.01
"""Seconds an inline ``collect()`` may hold the event loop: about fifty times a normal
reading (18-260 us here), well short of anything the loop's other work would notice."""

INLINE_STRIKES = 3
"""Runs in a row over :data:`INLINE_LIMIT` that move a probe back to its worker thread.

Not one: on a busy host a run is sometimes preempted for tens of milliseconds (seen here,
load 6 on 2 cores: 33 ms for a /proc/meminfo read), and a first run pays one-time costs
(loading libc for ``adjtimex``: 10 ms). A source that is really slow is slow every time.
A single run that overstays the probe's timeout moves it at once."""


class Probe(Protocol):
    """A source of samples, run by the agent every ``interval`` seconds.

    Attributes:
        name: a probe name from the catalog (``cpu``, ``memory``...).
        interval: seconds between runs.
        timeout: seconds one run may take.
    """

    name: str
    interval: float
    timeout: float

    async def sample(self) -> Sequence[Sample]:
        """Take one reading of every series the probe owns.

        Raises:
            ProbeError: when the source cannot be read.
            ProbeTimeoutError: when the run (or a previous one) overstays its timeout.
        """
        ...

    def close(self) -> None:
        """Release the probe's resources without waiting for a hung run."""
        ...


@dataclass(frozen=True, slots=True)
class ProbeEvent:
    """Something a push probe saw that is an edge, not a level (an OOM kill, a segfault).

    The runtime records it as an event of its own, beside condition changes.

    Attributes:
        type: the full CloudEvents type, e.g. ``io.nodemedic.kernel.oom_kill``.
        subject: what it is about (a unit, a device, a process), or None.
        data: the JSON payload.
    """

    type: str
    subject: str | None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProbeUpdate:
    """One report from a push probe.

    Attributes:
        samples: the complete current set of the probe's series. A series missing
            here is gone (its conditions resolve), exactly as for a polled probe.
        events: edges seen since the previous update, recorded as events.
        error: set when the source is unavailable (the bus is gone, /dev/kmsg cannot
            be read): the probe shows as down, ``samples`` is ignored and the
            probe's conditions stay as they were.
    """

    samples: Sequence[Sample] = ()
    events: Sequence[ProbeEvent] = ()
    error: str | None = None


class PushProbe(Protocol):
    """A source that pushes changes instead of being polled (D-Bus signals, /dev/kmsg).

    The runtime iterates :meth:`watch` for the life of the agent and applies every
    update to the rules as it arrives. If ``watch`` raises or ends, the probe shows as
    down and the runtime calls ``watch`` again after a pause.

    Attributes:
        name: a probe name from the catalog.
        interval: the longest gap between two updates: a push probe yields at least
            this often (its periodic resync), which is how the watchdog knows it lives.
        timeout: seconds one call into the source (a D-Bus call, a read) may take.
    """

    name: str
    interval: float
    timeout: float

    def watch(self) -> AsyncIterator[ProbeUpdate]:
        """Yield an update for every change, and at least one per ``interval``."""
        ...

    def close(self) -> None:
        """Release the probe's resources."""
        ...


AnyProbe = Probe | PushProbe
"""What :func:`agent.probes.build_probes` returns: polled and push probes."""


def is_push(probe: AnyProbe) -> TypeGuard[PushProbe]:
    """True for a push probe (one with ``watch``), False for a polled one."""
    return hasattr(probe, "watch")


async def sample_once(probe: AnyProbe) -> Sequence[Sample]:
    """One reading from any probe: ``sample()``, or a push probe's first update.

    Raises:
        ProbeError: when the source cannot be read or the first update reports an error.
        ProbeTimeoutError: when a push probe sends nothing within its interval.
    """
    if not is_push(probe):
        return await cast(Probe, probe).sample()
    updates = probe.watch()
    try:
        async with asyncio.timeout(probe.interval + probe.timeout):
            update = await anext(updates)
    except TimeoutError:
        raise ProbeTimeoutError(
            f"probe {probe.name}: no update within {probe.interval:g}s"
        ) from None
    except StopAsyncIteration:
        raise ProbeError(f"probe {probe.name}: its watch ended without an update") from None
    finally:
        aclose = getattr(updates, "aclose", None)
        if aclose is not None:
            await aclose()
    if update.error is not None:
        raise ProbeError(update.error)
    return update.samples


class BlockingProbe(abc.ABC):
    """Base for probes whose reading is blocking work (files, syscalls, psutil).

    Subclasses implement :meth:`collect`; this class runs it in the probe's own
    single-thread executor (threads named ``probe-<name>``), enforces the timeout and
    translates ``OSError``, ``psutil.Error`` and ``ValueError`` into :class:`ProbeError`.
    Any other exception is a bug in the probe and propagates unchanged.

    A subclass that sets :attr:`inline` runs :meth:`collect` on the event loop instead
    (see the module docstring); the timeout then cannot interrupt a run, so the run is
    timed, and runs over :data:`INLINE_LIMIT` send the probe back to its thread.

    Args:
        name: the catalog probe name.
        interval: seconds between runs (> 0).
        timeout: seconds one run may take (> 0).
        clock: monotonic seconds, for rates and for how long a run has hung.

    Raises:
        ValueError: when interval or timeout is not positive.
    """

    inline: ClassVar[bool] = False
    """True only for a probe type whose :meth:`collect` reads nothing but system-wide
    counters the kernel generates in memory (``/proc/stat``, ``/proc/meminfo``,
    ``/proc/loadavg``, ``/proc/vmstat``, ``/proc/pressure/*``, ``/proc/sys/fs/file-nr``,
    ``/proc/diskstats``, ``/proc/uptime``, ``/proc/net/dev``, ``adjtimex``, an interface's
    flags by ``SIOCGIFFLAGS``): such a read cannot block on I/O, so it runs on the event
    loop without a thread hand-off. Anything that can block stays False: ``statvfs`` (a
    network filesystem), hwmon sensors (i2c, slow drivers), a device's sysfs files,
    subprocesses, D-Bus, per-process files."""

    def __init__(
        self, *, name: str, interval: float, timeout: float, clock: Clock = time.monotonic
    ) -> None:
        if interval <= 0:
            raise ValueError(f"probe {name}: interval must be positive, got {interval}")
        if timeout <= 0:
            raise ValueError(f"probe {name}: timeout must be positive, got {timeout}")
        self.name = name
        self.interval = float(interval)
        self.timeout = float(timeout)
        self._clock = clock
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"probe-{name}"
        )
        self._running: concurrent.futures.Future[list[Sample]] | None = None
        self._started = 0.0
        self._closed = False
        self._inline = self.inline
        self._kept_in_thread = False
        self._slow_runs = 0
        self._kernel_files = KernelFiles()

    @property
    def runs_inline(self) -> bool:
        """Whether the next run reads on the event loop (False once one was too slow)."""
        return self._inline

    def read_next_on_loop(self, inline: bool) -> None:
        """Whether the next run reads on the event loop, for a probe whose sources vary.

        A probe with nothing to read that can block (no sensor chip, say) may run inline,
        and goes back to its thread once there is; a probe moved to its thread for slow
        runs stays there.
        """
        self._inline = inline and not self._kept_in_thread

    def read_kernel_file(self, path: Path) -> str:
        """Read a system-wide kernel file kept open between runs (see :class:`KernelFiles`).

        Raises:
            OSError: carrying the path, as ``open`` raises it.
        """
        return self._kernel_files.read(path)

    @abc.abstractmethod
    def collect(self) -> list[Sample]:
        """Read the source and return the samples; runs in the probe's worker thread
        (on the event loop for an :attr:`inline` probe).

        Raises:
            OSError: when a file or syscall fails (``filename`` names the path).
            ValueError: when the source is malformed (the message names the path).
            psutil.Error: when psutil fails.
        """

    async def sample(self) -> Sequence[Sample]:
        """Run :meth:`collect` in the worker thread under the timeout (or inline).

        Raises:
            ProbeError: when collect fails, or the probe is closed.
            ProbeTimeoutError: when collect overstays the timeout, or a previous run is
                still hung (no second run is queued behind it).
        """
        if self._closed:
            raise ProbeError(f"probe {self.name} is closed")
        try:
            if self._inline:
                return self._collect_inline()
            return await self._collect_in_thread()
        except OSError as err:
            raise ProbeError(f"probe {self.name}: {_describe_os_error(err)}") from err
        except psutil.Error as err:
            raise ProbeError(f"probe {self.name}: psutil: {err}") from err
        except ValueError as err:
            raise ProbeError(f"probe {self.name}: {err}") from err

    def _collect_inline(self) -> list[Sample]:
        started = self._clock()
        try:
            return self.collect()
        finally:
            took = self._clock() - started
            self._slow_runs = self._slow_runs + 1 if took > INLINE_LIMIT else 0
            if self._slow_runs >= INLINE_STRIKES or took > self.timeout:
                # A kernel-generated file should never be this slow; whatever makes it so
                # (a kernel bug, lock contention, a fixture tree on a slow disk), it must
                # not hold the loop again: the thread and its timeout guard it from now on.
                self._inline = False
                self._kept_in_thread = True
                log.warning(
                    "probe %s: %d readings in a row on the event loop took over %.0f ms "
                    "(the last %.1f ms); reading it in its worker thread from now on",
                    self.name,
                    self._slow_runs,
                    INLINE_LIMIT * 1000,
                    took * 1000,
                )

    async def _collect_in_thread(self) -> list[Sample]:
        running = self._running
        if running is not None and not running.done():
            hung_for = self._clock() - self._started
            raise ProbeTimeoutError(
                f"probe {self.name}: previous run still hung after {hung_for:.1f}s "
                "(blocked in a read or syscall); not starting another"
            )
        self._started = self._clock()
        future = self._executor.submit(self.collect)
        self._running = future
        # One loop future woken by the run's end or by the timeout, whichever comes first:
        # leaner than asyncio.wrap_future plus asyncio.wait (this runs every interval).
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        future.add_done_callback(lambda _: _wake_threadsafe(loop, waiter))
        timer = loop.call_later(self.timeout, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
        if not future.done():
            # We stop waiting; the thread cannot be stopped. ``self._running`` keeps
            # tracking it, so no second run starts behind it.
            future.add_done_callback(self._log_abandoned_run_returned)
            raise ProbeTimeoutError(
                f"probe {self.name}: run did not finish within {self.timeout:g}s"
            )
        return future.result()

    def close(self) -> None:
        """Shut the executor down without waiting for a run in progress."""
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._kernel_files.close()

    def _log_abandoned_run_returned(self, _: concurrent.futures.Future[list[Sample]]) -> None:
        # Runs in the worker thread when an abandoned run finally returns: the one
        # moment anyone can learn how long the source really blocked.
        log.info(
            "probe %s: abandoned run returned after %.1fs",
            self.name,
            self._clock() - self._started,
        )


class ProcfsProbe(BlockingProbe):
    """Base for probes that only read files under procfs: one constructor for them all.

    Subclasses set :attr:`NAME` and read below :attr:`proc`.

    Args:
        interval: seconds between runs.
        timeout: seconds one run may take.
        proc: where procfs is mounted (a fixture tree in tests).
        clock: monotonic seconds.
    """

    NAME: ClassVar[str]

    def __init__(
        self,
        *,
        interval: float = 10.0,
        timeout: float = 10.0,
        proc: Path = Path("/proc"),
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(name=self.NAME, interval=interval, timeout=timeout, clock=clock)
        self.proc = proc


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _wake_threadsafe(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None]) -> None:
    # In the worker thread when a run ends; an abandoned run may end after the loop closed.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_wake, waiter)


def next_beat(now: float, interval: float) -> float:
    """When a push probe's next heartbeat is due: the next multiple of its interval.

    ``now`` is the event loop's clock (``loop.time()``), the clock the runtime schedules
    polled probes on, at multiples of their intervals too: a heartbeat then wakes the
    loop together with the polled probes due at that moment instead of on its own, and
    every wake-up costs more CPU than a small probe's reading. Never more than one
    interval away, so a probe yielding at each beat yields at least once per interval.
    """
    return (math.floor(now / interval) + 1) * interval


def read_text(path: Path) -> str:
    """Read a small kernel file in one go.

    Undecodable bytes are kept as surrogates, so a path read from a kernel file can be
    handed back to a syscall unchanged.

    Raises:
        OSError: carrying the path, as ``open`` raises it.
    """
    # os.open/os.read rather than a text file object: a probe reads dozens of these per
    # run, and the three layers of io objects cost more than the read itself (about 47 us
    # against 20 us per file here).
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, _READ_CHUNK):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "surrogateescape")


_READ_CHUNK = 65536


def parse_error(path: Path, detail: str) -> ValueError:
    """A ValueError for malformed content that names the file, for :class:`ProbeError`."""
    return ValueError(f"cannot parse {path}: {detail}")


def _describe_os_error(err: OSError) -> str:
    reason = err.strerror or str(err)
    if err.filename is not None:
        return f"cannot read {err.filename}: {reason}"
    return reason
