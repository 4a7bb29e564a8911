"""Kernel clock discipline state from ``adjtimex(2)``, read-only.

``adjtimex`` with ``modes = 0`` only reads, needs no privilege and reflects whatever
disciplines the clock (chrony, ntpd, systemd-timesyncd), so the probe does not have
to know which one runs.
"""

from __future__ import annotations

__all__ = ["AdjtimexResult", "ClockProbe", "adjtimex"]

import ctypes
import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.model import Sample
from agent.probes.base import BlockingProbe, Clock

TIME_ERROR = 5
"""adjtimex's return value when the clock is not synchronised."""
STA_UNSYNC = 0x0040
"""Status bit: the clock is not synchronised."""
STA_NANO = 0x2000
"""Status bit: ``offset`` is in nanoseconds rather than microseconds."""


@dataclass(frozen=True, slots=True)
class AdjtimexResult:
    """What the probe uses of one ``adjtimex`` call.

    Attributes:
        result: the return value: the clock state, ``TIME_OK`` (0) to ``TIME_ERROR`` (5).
        status: the ``STA_*`` status bits.
        offset: the time offset, in ns with ``STA_NANO``, else in us.
        maxerror: the maximum error, in us.
    """

    result: int
    status: int
    offset: int
    maxerror: int


class _Timeval(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long))


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>, including the kernel's trailing padding.
    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_padding", ctypes.c_int * 11),
    )


@functools.cache
def _libc_adjtimex() -> Callable[[ctypes._Pointer[_Timex]], int]:
    # dlopen(NULL): the libc the interpreter already links, found without a subprocess
    # (ctypes.util.find_library would run ldconfig).
    function = ctypes.CDLL(None, use_errno=True).adjtimex
    function.argtypes = (ctypes.POINTER(_Timex),)
    function.restype = ctypes.c_int
    return function


def adjtimex() -> AdjtimexResult:
    """Call ``adjtimex(2)`` with ``modes = 0`` (read only).

    Raises:
        OSError: when the call fails (a seccomp filter may deny it).
    """
    timex = _Timex()
    result = _libc_adjtimex()(ctypes.pointer(timex))
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, f"adjtimex: {os.strerror(code)}")
    return AdjtimexResult(
        result=result, status=timex.status, offset=timex.offset, maxerror=timex.maxerror
    )


class ClockProbe(BlockingProbe):
    """Emits whether the kernel clock is synchronised, its offset and its maximum error.

    Args:
        interval: seconds between runs.
        timeout: seconds one run may take.
        adjtimex: the read-only ``adjtimex`` call.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        *,
        interval: float = 60.0,
        timeout: float = 10.0,
        adjtimex: Callable[[], AdjtimexResult] = adjtimex,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(name="clock", interval=interval, timeout=timeout, clock=clock)
        self._adjtimex = adjtimex

    def collect(self) -> list[Sample]:
        """Read the clock state once."""
        reading = self._adjtimex()
        synchronised = reading.result != TIME_ERROR and not reading.status & STA_UNSYNC
        offset_unit = 1e-9 if reading.status & STA_NANO else 1e-6
        return [
            Sample.of("nodemedic_clock_synchronised", 1.0 if synchronised else 0.0),
            Sample.of("nodemedic_clock_offset_seconds", reading.offset * offset_unit),
            Sample.of("nodemedic_clock_maxerror_seconds", reading.maxerror * 1e-6),
        ]
