"""FakeNvml: a stand-in for the ``pynvml`` module surface the GPU probe calls.

Why a fake: this machine (like CI's) has no NVIDIA GPU and no driver, so the real NVML
cannot run here. The fake is as close to the real module as a fake can be: its functions
have ``pynvml``'s names and signatures (a test compares them), it returns ``pynvml``'s own
ctypes types (``c_nvmlDevice_t`` and ``c_nvmlEventSet_t`` pointers, ``c_nvmlMemory_t``,
``c_nvmlUtilization_t``, ``c_nvmlEventData_t``), and it fails the way NVML does, by raising
``pynvml.NVMLError`` with NVML's return codes (which pynvml turns into the matching
``NVMLError_*`` subclass): NOT_SUPPORTED, GPU_IS_LOST, TIMEOUT from an empty event set,
UNINITIALIZED before ``nvmlInit``, INVALID_ARGUMENT for a foreign handle.
"""

# pynvml's names and parameter names, exactly.
# ruff: noqa: N802, N803

from __future__ import annotations

import ctypes
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynvml

from agent.probes.nvml import nvidia_gpus_on_pci_bus


def nvidia_host() -> bool:
    """True where the real NVML has something to find: a driver, or an NVIDIA GPU."""
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return nvidia_gpus_on_pci_bus(Path("/sys")) > 0
    return True


@dataclass
class FakeGpu:
    """One GPU as NVML would report it; tests change the fields between runs.

    Attributes:
        uuid: ``nvmlDeviceGetUUID``.
        name: ``nvmlDeviceGetName``.
        temperature: degrees Celsius.
        utilisation: (GPU percent, memory percent).
        memory_total: bytes.
        memory_used: bytes.
        power_mw: milliwatts.
        ecc_corrected: volatile corrected ECC errors.
        ecc_uncorrected: volatile uncorrected ECC errors.
        clock_event_reasons: the clock event (throttle) reasons bitmask.
        failures: pynvml function name -> the NVML error code that call answers with
            (``NVML_ERROR_NOT_SUPPORTED`` for a consumer card's ECC, say).
        lost: the GPU fell off the bus: every call about it answers GPU_IS_LOST.
    """

    uuid: str
    name: str = "NVIDIA A100-SXM4-80GB"
    temperature: int = 40
    utilisation: tuple[int, int] = (0, 0)
    memory_total: int = 80 * 2**30
    memory_used: int = 0
    power_mw: int = 60_000
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    clock_event_reasons: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    lost: bool = False
    # A real device struct for the handle to point at; NVML's handles are pointers that
    # stay the same for the whole session.
    _struct: Any = field(default_factory=pynvml.struct_c_nvmlDevice_t, repr=False)

    @property
    def handle(self) -> Any:
        """The ``c_nvmlDevice_t`` NVML hands out for this GPU."""
        return ctypes.pointer(self._struct)

    @property
    def address(self) -> int:
        """Where the handle points."""
        return ctypes.addressof(self._struct)


class _EventSet:
    def __init__(self) -> None:
        self.struct = pynvml.struct_c_nvmlEventSet_t()
        self.queue: deque[Any] = deque()
        self.masks: dict[int, int] = {}  # GPU address -> registered event types


class FakeNvml:
    """The ``pynvml`` functions the GPU probe calls, over a list of :class:`FakeGpu`.

    Args:
        gpus: the GPUs, in NVML index order.
        init_error: the NVML code ``nvmlInit`` fails with (LIBRARY_NOT_FOUND: no driver
            installed; DRIVER_NOT_LOADED: no kernel module), or None.
        legacy_driver: a driver before 535, without
            ``nvmlDeviceGetCurrentClocksEventReasons`` (pynvml answers FUNCTION_NOT_FOUND).
        events_supported: False when ``nvmlEventSetCreate`` answers NOT_SUPPORTED.

    Attributes:
        initialised: NVML's reference count (``nvmlInit`` minus ``nvmlShutdown``).
        init_calls: how often ``nvmlInit`` was called.
    """

    NVMLError = pynvml.NVMLError

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        *,
        init_error: int | None = None,
        legacy_driver: bool = False,
        events_supported: bool = True,
    ) -> None:
        self.gpus = list(gpus or [])
        self.init_error = init_error
        self.legacy_driver = legacy_driver
        self.events_supported = events_supported
        self.initialised = 0
        self.init_calls = 0
        self._event_sets: dict[int, _EventSet] = {}

    # -- test controls -------------------------------------------------------------------

    def xid(self, index: int, code: int, *, times: int = 1) -> None:
        """The driver reports XID ``code`` on GPU ``index`` (to every set registered for it)."""
        gpu = self.gpus[index]
        for event_set in self._event_sets.values():
            if event_set.masks.get(gpu.address, 0) & pynvml.nvmlEventTypeXidCriticalError:
                for _ in range(times):
                    data = pynvml.c_nvmlEventData_t()
                    data.device = gpu.handle
                    data.eventType = pynvml.nvmlEventTypeXidCriticalError
                    data.eventData = code
                    event_set.queue.append(data)

    @property
    def open_event_sets(self) -> int:
        """Event sets created and not freed."""
        return len(self._event_sets)

    # -- pynvml's surface ----------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self._check_initialised()
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._check_initialised()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self._check_initialised()
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[index]
        self._check(gpu, "nvmlDeviceGetHandleByIndex")
        return gpu.handle

    def nvmlDeviceGetUUID(self, handle: object) -> str:
        return self._gpu(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, handle: object) -> str:
        return self._gpu(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetTemperature(self, handle: object, sensor: int) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetTemperature")
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> Any:
        gpu = self._gpu(handle, "nvmlDeviceGetUtilizationRates")
        return pynvml.c_nvmlUtilization_t(gpu=gpu.utilisation[0], memory=gpu.utilisation[1])

    def nvmlDeviceGetMemoryInfo(self, handle: object, version: int | None = None) -> Any:
        gpu = self._gpu(handle, "nvmlDeviceGetMemoryInfo")
        free = gpu.memory_total - gpu.memory_used
        if not version:
            return pynvml.c_nvmlMemory_t(total=gpu.memory_total, free=free, used=gpu.memory_used)
        memory = pynvml.c_nvmlMemory_v2_t(total=gpu.memory_total, free=free, used=gpu.memory_used)
        memory.version = version
        return memory

    def nvmlDeviceGetPowerUsage(self, handle: object) -> int:
        return self._gpu(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetTotalEccErrors(self, handle: object, errorType: int, counterType: int) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetTotalEccErrors")
        if counterType not in (pynvml.NVML_VOLATILE_ECC, pynvml.NVML_AGGREGATE_ECC):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if errorType == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED:
            return gpu.ecc_corrected
        if errorType == pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED:
            return gpu.ecc_uncorrected
        raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: object) -> int:
        if self.legacy_driver:
            # pynvml looks the symbol up in the driver's library first.
            raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        return self._gpu(handle, "nvmlDeviceGetCurrentClocksEventReasons").clock_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: object) -> int:
        return self._gpu(handle, "nvmlDeviceGetCurrentClocksThrottleReasons").clock_event_reasons

    def nvmlEventSetCreate(self) -> Any:
        self._check_initialised()
        if not self.events_supported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        event_set = _EventSet()
        self._event_sets[ctypes.addressof(event_set.struct)] = event_set
        return ctypes.pointer(event_set.struct)

    def nvmlDeviceRegisterEvents(self, handle: object, eventTypes: int, eventSet: object) -> None:
        gpu = self._gpu(handle, "nvmlDeviceRegisterEvents")
        event_set = self._event_set(eventSet)
        event_set.masks[gpu.address] = event_set.masks.get(gpu.address, 0) | eventTypes

    def nvmlEventSetWait(self, eventSet: object, timeoutms: int) -> Any:
        event_set = self._event_set(eventSet)
        if not event_set.queue:
            # The fake never blocks: an empty set times out at once, whatever timeoutms.
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
        return event_set.queue.popleft()

    def nvmlEventSetFree(self, eventSet: object) -> None:
        self._event_set(eventSet)
        del self._event_sets[_pointee(eventSet)]

    # -- NVML's checks -------------------------------------------------------------------

    def _check_initialised(self) -> None:
        if self.initialised <= 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def _gpu(self, handle: object, function: str) -> FakeGpu:
        self._check_initialised()
        if not isinstance(handle, pynvml.c_nvmlDevice_t):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        address = _pointee(handle)
        for gpu in self.gpus:
            if gpu.address == address:
                self._check(gpu, function)
                return gpu
        raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    def _check(self, gpu: FakeGpu, function: str) -> None:
        if gpu.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        if function in gpu.failures:
            raise pynvml.NVMLError(gpu.failures[function])

    def _event_set(self, event_set: object) -> _EventSet:
        self._check_initialised()
        if not isinstance(event_set, pynvml.c_nvmlEventSet_t):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        found = self._event_sets.get(_pointee(event_set))
        if found is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return found


def _pointee(pointer: Any) -> int:
    value: int = ctypes.cast(pointer, ctypes.c_void_p).value or 0
    return value
