"""The part of NVML (NVIDIA's management library, through ``pynvml``) the GPU probe calls.

:class:`Nvml` is the module surface the probe uses: the real ``pynvml`` module (from the
``nvidia-ml-py`` package, the ``gpu`` extra) satisfies it, and so does the tests'
``FakeNvml``. The constants are NVML's ABI values from ``nvml.h``; they are repeated here so
that importing this module never needs the optional package (a test checks them against
``pynvml``).
"""

# The protocol repeats pynvml's camelCase names and parameters exactly.
# ruff: noqa: N802, N803

from __future__ import annotations

__all__ = [
    "CLOCK_EVENT_REASONS",
    "NVML_ERROR_DRIVER_NOT_LOADED",
    "NVML_ERROR_FUNCTION_NOT_FOUND",
    "NVML_ERROR_GPU_IS_LOST",
    "NVML_ERROR_LIBRARY_NOT_FOUND",
    "NVML_ERROR_NOT_SUPPORTED",
    "NVML_ERROR_TIMEOUT",
    "NVML_EVENT_TYPE_XID_CRITICAL_ERROR",
    "NVML_MEMORY_ERROR_TYPE_CORRECTED",
    "NVML_MEMORY_ERROR_TYPE_UNCORRECTED",
    "NVML_TEMPERATURE_GPU",
    "NVML_VOLATILE_ECC",
    "EventData",
    "MemoryInfo",
    "Nvml",
    "UtilizationRates",
    "error_code",
]

from typing import Protocol

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15

NVML_TEMPERATURE_GPU = 0
NVML_VOLATILE_ECC = 0
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_EVENT_TYPE_XID_CRITICAL_ERROR = 0x8

CLOCK_EVENT_REASONS: tuple[tuple[int, str], ...] = (
    (0x001, "gpu_idle"),
    (0x002, "applications_clocks_setting"),
    (0x004, "sw_power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "sw_thermal_slowdown"),
    (0x040, "hw_thermal_slowdown"),
    (0x080, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
    (0x200, "board_limit"),
    (0x400, "reliability"),
)
"""Bits of ``nvmlDeviceGetCurrentClocksEventReasons`` (formerly "throttle reasons") and the
``reason`` label each becomes. Any other bit is reported as ``other``."""


class UtilizationRates(Protocol):
    """``c_nvmlUtilization_t``: percentages over the driver's last sample period."""

    @property
    def gpu(self) -> int:
        """Percent of the period one or more kernels ran."""
        ...

    @property
    def memory(self) -> int:
        """Percent of the period device memory was read or written."""
        ...


class MemoryInfo(Protocol):
    """``c_nvmlMemory_t``: device memory in bytes."""

    @property
    def total(self) -> int:
        """Installed memory."""
        ...

    @property
    def used(self) -> int:
        """Memory allocated by processes and the driver."""
        ...


class EventData(Protocol):
    """``c_nvmlEventData_t``: one event from an event set."""

    @property
    def device(self) -> object:
        """The device handle (a ``c_nvmlDevice_t`` pointer) the event is about."""
        ...

    @property
    def eventType(self) -> int:
        """The event type bit, e.g. ``nvmlEventTypeXidCriticalError``."""
        ...

    @property
    def eventData(self) -> int:
        """For an XID event, the XID code."""
        ...


class Nvml(Protocol):
    """The functions of the ``pynvml`` module the GPU probe calls, with its signatures.

    Every function raises ``NVMLError`` (a subclass per error code, the code in
    ``.value``) on failure. Handles and event sets are opaque ctypes pointers.
    """

    NVMLError: type[Exception]

    def nvmlInit(self) -> None:
        """Load the library and initialise NVML (reference counted)."""
        ...

    def nvmlShutdown(self) -> None:
        """Release one reference taken by ``nvmlInit``."""
        ...

    def nvmlDeviceGetCount(self) -> int:
        """The number of GPUs NVML can see."""
        ...

    def nvmlDeviceGetHandleByIndex(self, index: int) -> object:
        """A handle for the GPU at ``index`` (stable for the life of the NVML session)."""
        ...

    def nvmlDeviceGetUUID(self, handle: object) -> str:
        """The GPU's globally unique id, e.g. ``GPU-5a3b...``."""
        ...

    def nvmlDeviceGetName(self, handle: object) -> str:
        """The product name, e.g. ``NVIDIA A100-SXM4-80GB``."""
        ...

    def nvmlDeviceGetTemperature(self, handle: object, sensor: int) -> int:
        """Degrees Celsius of ``sensor`` (``NVML_TEMPERATURE_GPU``: the die)."""
        ...

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> UtilizationRates:
        """GPU and memory utilisation percentages."""
        ...

    def nvmlDeviceGetMemoryInfo(self, handle: object, version: int | None = None) -> MemoryInfo:
        """Device memory used and total."""
        ...

    def nvmlDeviceGetPowerUsage(self, handle: object) -> int:
        """Board power draw in milliwatts."""
        ...

    def nvmlDeviceGetTotalEccErrors(
        self,
        handle: object,
        errorType: int,
        counterType: int,
    ) -> int:
        """ECC errors of ``errorType`` (corrected/uncorrected) in ``counterType``."""
        ...

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: object) -> int:
        """Bitmask of why the clocks are below their maximum (driver 535 and later)."""
        ...

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: object) -> int:
        """The same bitmask under its pre-535 name."""
        ...

    def nvmlEventSetCreate(self) -> object:
        """A new, empty event set."""
        ...

    def nvmlDeviceRegisterEvents(
        self,
        handle: object,
        eventTypes: int,
        eventSet: object,
    ) -> None:
        """Deliver the device's events of ``eventTypes`` (a bitmask) to ``eventSet``."""
        ...

    def nvmlEventSetWait(self, eventSet: object, timeoutms: int) -> EventData:
        """The next event, waiting up to ``timeoutms``; raises ``NVML_ERROR_TIMEOUT`` if none."""
        ...

    def nvmlEventSetFree(self, eventSet: object) -> None:
        """Release an event set."""
        ...


def error_code(err: Exception) -> int | None:
    """The NVML return code an ``NVMLError`` carries (its ``value``), or None."""
    value = getattr(err, "value", None)
    return value if isinstance(value, int) else None
