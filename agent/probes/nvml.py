"""The part of NVML (NVIDIA's management library, through ``pynvml``) the GPU probe calls.

:class:`Nvml` is the module surface the probe uses: the real ``pynvml`` module (from the
``nvidia-ml-py`` package, the ``gpu`` extra) satisfies it, and so does the tests'
``FakeNvml``. The constants are NVML's ABI values from ``nvml.h``; they are repeated here so
that importing this module never needs the optional package (a test checks them against
``pynvml``). :func:`start_nvml` tells a host with nothing to watch from a broken one.
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
    "NvmlAbsentError",
    "UtilizationRates",
    "error_code",
    "nvidia_gpus_on_pci_bus",
    "start_nvml",
]

import ctypes
import importlib.util
from pathlib import Path
from typing import Protocol

from agent.errors import ProbeError

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


class NvmlAbsentError(Exception):
    """Raised when there is nothing for NVML to watch: no NVIDIA GPU or driver, or no pynvml.

    Not a failure: the GPU probe disables itself with this message.
    """


_NO_DRIVER = frozenset({NVML_ERROR_LIBRARY_NOT_FOUND, NVML_ERROR_DRIVER_NOT_LOADED})
_LIBRARY = "libnvidia-ml.so.1"
_NO_LIBRARY = "NVML Shared Library Not Found"
"""pynvml's text for NVML_ERROR_LIBRARY_NOT_FOUND."""
_NVIDIA_VENDOR = "0x10de"
_DISPLAY_CLASS = "0x03"
"""PCI class 03: display controllers (VGA and 3D); NVSwitches are bridges (06)."""


def start_nvml(nvml: Nvml | None, *, sys: Path) -> Nvml:
    """Import ``pynvml`` unless ``nvml`` is given, and initialise NVML.

    Args:
        nvml: the NVML module, or None to import ``pynvml``.
        sys: where sysfs is mounted, to look for NVIDIA GPUs on the PCI bus.

    Returns:
        The initialised module; the caller owns one ``nvmlShutdown``.

    Raises:
        NvmlAbsentError: the package is not installed, or NVML finds no library or driver
            and no NVIDIA GPU is on the PCI bus.
        ProbeError: NVML does not start although it should: a GPU is on the PCI bus, or the
            driver is there and fails (version mismatch, no permission).
    """
    if nvml is None:
        if importlib.util.find_spec("pynvml") is not None and not _nvml_may_start(sys):
            # pynvml holds about 2 MB of ctypes structures for as long as the agent runs:
            # a host with no NVIDIA GPU and no library to load never imports it, and says
            # what pynvml's own nvmlInit would have said.
            raise NvmlAbsentError(f"no NVIDIA GPU or driver on this host (NVML: {_NO_LIBRARY})")
        try:
            import pynvml
        except ImportError:
            present = nvidia_gpus_on_pci_bus(sys)
            on_bus = f", though {present} NVIDIA GPU(s) are on the PCI bus" if present else ""
            raise NvmlAbsentError(
                f"the nvidia-ml-py package is not installed (pip install 'nodemedic[gpu]'){on_bus}"
            ) from None
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as err:
        if error_code(err) not in _NO_DRIVER:
            raise ProbeError(f"probe gpu: NVML did not start: {err}") from err
        present = nvidia_gpus_on_pci_bus(sys)
        if not present:
            raise NvmlAbsentError(f"no NVIDIA GPU or driver on this host (NVML: {err})") from err
        raise ProbeError(
            f"probe gpu: {present} NVIDIA GPU(s) on the PCI bus but no driver answers "
            f"(NVML: {err}); is the nvidia kernel module loaded, and /dev/nvidia* visible "
            "to the agent (systemd's PrivateDevices=yes hides it)?"
        ) from err
    return nvml


def _nvml_may_start(sys: Path) -> bool:
    """Whether NVML could start here: an NVIDIA GPU on the PCI bus, or its library loads."""
    if nvidia_gpus_on_pci_bus(sys):
        return True
    try:
        ctypes.CDLL(_LIBRARY)  # the name pynvml loads on Linux
    except OSError:
        return False
    return True


def nvidia_gpus_on_pci_bus(sys: Path) -> int:
    """How many NVIDIA display controllers (GPUs) sysfs lists on the PCI bus."""
    try:
        devices = list((sys / "bus" / "pci" / "devices").iterdir())
    except OSError:
        return 0
    found = 0
    for device in devices:
        try:
            vendor = (device / "vendor").read_text(encoding="ascii").strip()
            pci_class = (device / "class").read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        found += vendor == _NVIDIA_VENDOR and pci_class.startswith(_DISPLAY_CLASS)
    return found
