"""NVIDIA GPUs through NVML: temperature, utilisation, memory, power, ECC and XID errors, and
the reasons the clocks are held down (throttling).

The probe imports ``pynvml`` (the ``gpu`` extra) and starts NVML lazily, in its worker
thread, on its first run. On a host without NVIDIA GPUs or driver it disables itself with
one info line and emits nothing from then on, so one configuration serves a mixed fleet.
Where NVML does not start although an NVIDIA GPU sits on the PCI bus (the kernel module did
not build for a new kernel, a library/kernel version mismatch after an upgrade,
``/dev/nvidia*`` hidden or not permitted) the probe fails instead, and tries again every
interval: that host needs attention.
"""

from __future__ import annotations

__all__ = ["GpuProbe"]

import ctypes
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

from agent.errors import ProbeError
from agent.model import Sample
from agent.probes.base import BlockingProbe, Clock
from agent.probes.nvml import (
    CLOCK_EVENT_REASONS,
    NVML_ERROR_FUNCTION_NOT_FOUND,
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_TIMEOUT,
    NVML_EVENT_TYPE_XID_CRITICAL_ERROR,
    NVML_MEMORY_ERROR_TYPE_CORRECTED,
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
    NVML_TEMPERATURE_GPU,
    NVML_VOLATILE_ECC,
    Nvml,
    NvmlAbsentError,
    error_code,
    start_nvml,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_EVENTS_PER_RUN = 1000
"""An XID storm is drained at most this many events per run; the rest wait for the next."""
_KNOWN_REASON_BITS = sum(bit for bit, _ in CLOCK_EVENT_REASONS)
_EVENTS = -1
"""The key of the XID event set in the failing-reads bookkeeping (GPUs have indices >= 0)."""


class _GpuLostError(Exception):
    """A call answered NVML_ERROR_GPU_IS_LOST: the GPU fell off the bus or hung hard."""


@dataclass(slots=True)
class _Gpu:
    """What the probe knows about one GPU between runs."""

    index: int
    handle: object | None = None
    uuid: str = "unknown"
    name: str = "unknown"
    xid_watched: bool = False
    xid_total: int = 0
    xid_last: int = 0
    xid_recent: deque[tuple[float, int]] = field(default_factory=deque)
    up: bool = True

    @property
    def labels(self) -> dict[str, str]:
        return {"gpu": str(self.index), "uuid": self.uuid, "name": self.name}

    def __str__(self) -> str:
        return f"GPU {self.index} ({self.uuid})"


def _address(handle: object) -> int | None:
    # NVML hands out one handle per device for the whole session, and an event's
    # ``device`` is that same pointer: its address tells which GPU the event is about.
    if isinstance(handle, ctypes._Pointer):
        return ctypes.cast(handle, ctypes.c_void_p).value
    return None


class GpuProbe(BlockingProbe):
    """Emits per-GPU health from NVML, or nothing on a host without an NVIDIA driver.

    Each GPU's series carry ``gpu`` (its NVML index), ``uuid`` and ``name``. A reading the
    GPU does not support (NVML_ERROR_NOT_SUPPORTED: no ECC on a consumer card, no power
    sensor) is left out; any other failed reading is left out and logged once, when it
    starts failing and when it recovers. A GPU that is lost (fallen off the bus) shows
    ``nodemedic_gpu_up`` 0 with its last known identity.

    XID errors arrive as NVML events: the probe registers every GPU for
    ``nvmlEventTypeXidCriticalError`` and drains the event set without waiting on each run.

    Args:
        interval: seconds between runs.
        timeout: seconds one run may take (starting NVML can take seconds on a GPU host
            without persistence mode).
        xid_window: seconds ``nodemedic_gpu_xid_errors_recent`` looks back.
        nvml: the NVML module; None imports ``pynvml`` on the first run.
        sys: where sysfs is mounted: the PCI bus tells a host without NVIDIA GPUs from
            one whose driver is broken.
        clock: monotonic seconds.

    Raises:
        ValueError: when ``xid_window`` is not positive.
    """

    def __init__(
        self,
        *,
        interval: float = 10.0,
        timeout: float = 10.0,
        xid_window: float = 600.0,
        nvml: Nvml | None = None,
        sys: Path = Path("/sys"),
        clock: Clock = time.monotonic,
    ) -> None:
        if xid_window <= 0:
            raise ValueError(f"probe gpu: xid_window must be positive, got {xid_window}")
        super().__init__(name="gpu", interval=interval, timeout=timeout, clock=clock)
        self._xid_window = float(xid_window)
        self._nvml = nvml
        self._sys = sys
        self._nvml_started = False
        self._disabled_reason: str | None = None
        self._gpus: list[_Gpu] = []
        self._by_address: dict[int, _Gpu] = {}
        self._event_set: object | None = None
        self._legacy_reasons = False
        self._failing: set[tuple[int, str]] = set()

    @property
    def disabled_reason(self) -> str | None:
        """Why the probe disabled itself (no NVIDIA driver), or None while it works."""
        return self._disabled_reason

    def collect(self) -> list[Sample]:
        """Start NVML on the first run, then read every GPU and drain the XID events.

        Raises:
            ProbeError: when NVML is installed but does not start, or cannot count GPUs.
        """
        if self._disabled_reason is not None:
            return []
        nvml = self._nvml if self._nvml_started else self._start()
        if nvml is None:
            return []
        now = self._clock()
        self._drain_xid_events(nvml, now)
        samples = [Sample.of("nodemedic_gpu_devices", len(self._gpus))]
        for gpu in self._gpus:
            samples.extend(self._gpu_samples(nvml, gpu, now))
        return samples

    def close(self) -> None:
        """Stop the worker; free the event set and shut NVML down once no run is in flight."""
        super().close()
        running = self._running
        if running is None or running.done():
            self._stop_nvml()
        else:
            running.add_done_callback(lambda _: self._stop_nvml())

    # -- starting and stopping -----------------------------------------------------------

    def _start(self) -> Nvml | None:
        try:
            nvml = start_nvml(self._nvml, sys=self._sys)
        except NvmlAbsentError as err:
            self._disable(str(err))
            return None
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as err:
            _quietly(nvml, nvml.nvmlShutdown)
            raise ProbeError(f"probe gpu: NVML cannot count the GPUs: {err}") from err
        self._nvml = nvml
        self._nvml_started = True
        self._event_set = self._create_event_set(nvml)
        self._gpus = [_Gpu(index) for index in range(count)]
        for gpu in self._gpus:
            self._open(nvml, gpu)
        log.info("probe gpu: watching %d NVIDIA GPU(s) through NVML", count)
        return nvml

    def _disable(self, reason: str) -> None:
        self._disabled_reason = reason
        # Every later run returns [] without touching anything, so it can run on the
        # event loop: a thread hand-off would cost more than the run (BlockingProbe.inline).
        self._inline = True
        log.info("probe gpu: disabled: %s", reason)

    def _create_event_set(self, nvml: Nvml) -> object | None:
        try:
            return nvml.nvmlEventSetCreate()
        except nvml.NVMLError as err:
            log.info("probe gpu: no XID error counts: NVML event sets unavailable (%s)", err)
            return None

    def _open(self, nvml: Nvml, gpu: _Gpu) -> bool:
        """Get the GPU's handle and identity and register it for XID events."""
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(gpu.index)
        except nvml.NVMLError as err:
            self._failed(gpu.index, gpu, "its handle", err)
            return False
        self._recovered(gpu.index, gpu, "its handle")
        gpu.handle = handle
        address = _address(handle)
        if address is not None:
            self._by_address[address] = gpu
        for attribute, read in (("uuid", nvml.nvmlDeviceGetUUID), ("name", nvml.nvmlDeviceGetName)):
            try:
                setattr(gpu, attribute, str(read(handle)) or "unknown")
            except nvml.NVMLError as err:
                log.debug("probe gpu: GPU %d: no %s: %s", gpu.index, attribute, err)
        if self._event_set is not None:
            try:
                nvml.nvmlDeviceRegisterEvents(
                    handle, NVML_EVENT_TYPE_XID_CRITICAL_ERROR, self._event_set
                )
                gpu.xid_watched = True
            except nvml.NVMLError as err:
                log.info("probe gpu: %s: no XID error counts: %s", gpu, err)
        return True

    def _stop_nvml(self) -> None:
        nvml = self._nvml
        if not self._nvml_started or nvml is None:
            return
        self._nvml_started = False
        if self._event_set is not None:
            _quietly(nvml, lambda: nvml.nvmlEventSetFree(self._event_set))
            self._event_set = None
        _quietly(nvml, nvml.nvmlShutdown)

    # -- reading -------------------------------------------------------------------------

    def _gpu_samples(self, nvml: Nvml, gpu: _Gpu, now: float) -> list[Sample]:
        if gpu.handle is None and not self._open(nvml, gpu):
            return [Sample.of("nodemedic_gpu_up", 0, **gpu.labels), *self._xid_samples(gpu, now)]
        try:
            readings = self._read_all(nvml, gpu, gpu.handle)
        except _GpuLostError:
            self._set_up(gpu, up=False)
            readings = []
        else:
            self._set_up(gpu, up=True)
        up = Sample.of("nodemedic_gpu_up", float(gpu.up), **gpu.labels)
        return [up, *readings, *self._xid_samples(gpu, now)]

    def _read_all(self, nvml: Nvml, gpu: _Gpu, handle: object) -> list[Sample]:
        out: list[Sample] = []
        labels = gpu.labels

        def add(metric: str, value: float, **extra: str) -> None:
            out.append(Sample.of(metric, value, **labels, **extra))

        temperature = self._read(
            nvml,
            gpu,
            "temperature",
            lambda: nvml.nvmlDeviceGetTemperature(handle, NVML_TEMPERATURE_GPU),
        )
        if temperature is not None:
            add("nodemedic_gpu_temperature_celsius", temperature)
        rates = self._read(
            nvml, gpu, "utilisation", lambda: nvml.nvmlDeviceGetUtilizationRates(handle)
        )
        if rates is not None:
            add("nodemedic_gpu_utilisation_ratio", min(1.0, rates.gpu / 100))
            add("nodemedic_gpu_memory_utilisation_ratio", min(1.0, rates.memory / 100))
        memory = self._read(nvml, gpu, "memory", lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        if memory is not None:
            add("nodemedic_gpu_memory_used_bytes", memory.used)
            add("nodemedic_gpu_memory_total_bytes", memory.total)
        power = self._read(nvml, gpu, "power", lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        if power is not None:
            add("nodemedic_gpu_power_watts", power / 1000)
        for error_type, kind in (
            (NVML_MEMORY_ERROR_TYPE_CORRECTED, "corrected"),
            (NVML_MEMORY_ERROR_TYPE_UNCORRECTED, "uncorrected"),
        ):
            read_ecc = partial(
                nvml.nvmlDeviceGetTotalEccErrors, handle, error_type, NVML_VOLATILE_ECC
            )
            count = self._read(nvml, gpu, f"{kind} ECC errors", read_ecc)
            if count is not None:
                add(f"nodemedic_gpu_ecc_{kind}_errors_total", count)
        reasons = self._read(nvml, gpu, "clock event reasons", lambda: self._reasons(nvml, handle))
        if reasons is not None:
            for bit, reason in CLOCK_EVENT_REASONS:
                add(
                    "nodemedic_gpu_throttle_reason_active",
                    float(bool(reasons & bit)),
                    reason=reason,
                )
            other = bool(reasons & ~_KNOWN_REASON_BITS)
            add("nodemedic_gpu_throttle_reason_active", float(other), reason="other")
        return out

    def _read(self, nvml: Nvml, gpu: _Gpu, what: str, call: Callable[[], T]) -> T | None:
        """One NVML reading: None when unsupported or failing; raises when the GPU is lost."""
        try:
            value = call()
        except nvml.NVMLError as err:
            code = error_code(err)
            if code == NVML_ERROR_GPU_IS_LOST:
                raise _GpuLostError from err
            if code != NVML_ERROR_NOT_SUPPORTED:
                self._failed(gpu.index, gpu, what, err)
            return None
        self._recovered(gpu.index, gpu, what)
        return value

    def _reasons(self, nvml: Nvml, handle: object) -> int:
        if not self._legacy_reasons:
            try:
                return nvml.nvmlDeviceGetCurrentClocksEventReasons(handle)
            except nvml.NVMLError as err:
                # Drivers before 535 only know the function by its old name.
                if error_code(err) != NVML_ERROR_FUNCTION_NOT_FOUND:
                    raise
                self._legacy_reasons = True
        return nvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle)

    # -- XID events ----------------------------------------------------------------------

    def _drain_xid_events(self, nvml: Nvml, now: float) -> None:
        if self._event_set is None:
            return
        seen: dict[int, int] = {}
        for _ in range(_MAX_EVENTS_PER_RUN):
            try:
                event = nvml.nvmlEventSetWait(self._event_set, 0)
            except nvml.NVMLError as err:
                if error_code(err) != NVML_ERROR_TIMEOUT:
                    self._failed(_EVENTS, "all GPUs", "XID events", err)
                    return
                break
            if not event.eventType & NVML_EVENT_TYPE_XID_CRITICAL_ERROR:
                continue
            address = _address(event.device)
            gpu = self._by_address.get(address) if address is not None else None
            if gpu is None:
                continue
            gpu.xid_total += 1
            gpu.xid_last = int(event.eventData)
            seen[gpu.index] = seen.get(gpu.index, 0) + 1
        self._recovered(_EVENTS, "all GPUs", "XID events")
        for gpu in self._gpus:
            count = seen.get(gpu.index, 0)
            if count:
                gpu.xid_recent.append((now, count))
                log.warning(
                    "probe gpu: %s: %d XID error(s), the last XID %d", gpu, count, gpu.xid_last
                )

    def _xid_samples(self, gpu: _Gpu, now: float) -> list[Sample]:
        if not gpu.xid_watched:
            return []
        recent = gpu.xid_recent
        while recent and recent[0][0] <= now - self._xid_window:
            recent.popleft()
        labels = gpu.labels
        return [
            Sample.of("nodemedic_gpu_xid_errors_total", gpu.xid_total, **labels),
            Sample.of("nodemedic_gpu_xid_errors_recent", sum(n for _, n in recent), **labels),
            Sample.of("nodemedic_gpu_xid_last_code", gpu.xid_last, **labels),
        ]

    # -- logging on transitions ----------------------------------------------------------

    def _set_up(self, gpu: _Gpu, *, up: bool) -> None:
        if up != gpu.up:
            if up:
                log.info("probe gpu: %s answers again", gpu)
            else:
                log.warning("probe gpu: %s is lost (NVML_ERROR_GPU_IS_LOST)", gpu)
        gpu.up = up

    def _failed(self, index: int, subject: object, what: str, err: Exception) -> None:
        if (index, what) not in self._failing:
            self._failing.add((index, what))
            log.warning("probe gpu: %s: cannot read %s: %s; leaving it out", subject, what, err)

    def _recovered(self, index: int, subject: object, what: str) -> None:
        if (index, what) in self._failing:
            self._failing.discard((index, what))
            log.info("probe gpu: %s: %s readable again", subject, what)


def _quietly(nvml: Nvml, call: Callable[[], object]) -> None:
    try:
        call()
    except nvml.NVMLError as err:
        log.debug("probe gpu: NVML cleanup: %s", err)
