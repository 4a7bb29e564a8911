"""Host probes: one module per source, each a :class:`~agent.probes.base.Probe`.

:func:`build_probes` turns the ``probes`` section of the configuration into the
enabled probes; the agent runs each on its own interval.
"""

from __future__ import annotations

__all__ = [
    "AnyProbe",
    "BlockingProbe",
    "ClockProbe",
    "CpuProbe",
    "CustomProbe",
    "DiskioProbe",
    "EndpointsProbe",
    "FdsProbe",
    "FilesystemProbe",
    "GpuProbe",
    "KmsgProbe",
    "LoadProbe",
    "MemoryProbe",
    "NetworkProbe",
    "PressureProbe",
    "Probe",
    "ProbeEvent",
    "ProbeUpdate",
    "ProcessesProbe",
    "PushProbe",
    "SensorsProbe",
    "UnitsProbe",
    "build_probes",
]

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from agent.probes.base import AnyProbe, BlockingProbe, Probe, ProbeEvent, ProbeUpdate, PushProbe
from agent.probes.clock import ClockProbe
from agent.probes.cpu import CpuProbe
from agent.probes.custom import CustomProbe
from agent.probes.diskio import DiskioProbe
from agent.probes.endpoints import EndpointsProbe
from agent.probes.fds import FdsProbe
from agent.probes.filesystem import FilesystemProbe
from agent.probes.gpu import GpuProbe
from agent.probes.kmsg import KmsgProbe
from agent.probes.kmsg_match import KernelPattern
from agent.probes.load import LoadProbe
from agent.probes.memory import MemoryProbe
from agent.probes.network import NetworkProbe
from agent.probes.pressure import PressureProbe
from agent.probes.processes import ProcessesProbe
from agent.probes.sensors import SensorsProbe
from agent.probes.units import UnitsProbe

if TYPE_CHECKING:
    # agent.config imports agent.probes.catalog, so importing it here at run time
    # would be circular; build_probes only reads attributes.
    from agent.config import ProbeConfig, ProbesConfig


class _Timing(TypedDict):
    interval: float
    timeout: float


def build_probes(
    config: ProbesConfig, *, proc: Path = Path("/proc"), sys: Path = Path("/sys")
) -> list[AnyProbe]:
    """One probe per enabled entry of ``config``, in the catalog's order.

    Args:
        config: the ``probes`` section of the settings.
        proc: where procfs is mounted (a fixture tree in tests).
        sys: where sysfs is mounted (a fixture tree in tests).

    Returns:
        The enabled probes, each with its configured interval and effective timeout.
    """

    def timing(entry: ProbeConfig) -> _Timing:
        return {"interval": entry.interval.total_seconds(), "timeout": entry.effective_timeout}

    factories: dict[str, Callable[[], AnyProbe]] = {
        "cpu": lambda: CpuProbe(proc=proc, **timing(config.cpu)),
        "memory": lambda: MemoryProbe(proc=proc, **timing(config.memory)),
        "load": lambda: LoadProbe(proc=proc, **timing(config.load)),
        "pressure": lambda: PressureProbe(proc=proc, **timing(config.pressure)),
        "filesystem": lambda: FilesystemProbe(
            proc=proc,
            exclude_fstypes=config.filesystem.exclude_fstypes,
            exclude_mountpoints=config.filesystem.exclude_mountpoints,
            **timing(config.filesystem),
        ),
        "diskio": lambda: DiskioProbe(
            proc=proc, exclude_devices=config.diskio.exclude_devices, **timing(config.diskio)
        ),
        "network": lambda: NetworkProbe(
            proc=proc,
            exclude_interfaces=config.network.exclude_interfaces,
            **timing(config.network),
        ),
        "fds": lambda: FdsProbe(proc=proc, **timing(config.fds)),
        "clock": lambda: ClockProbe(**timing(config.clock)),
        "sensors": lambda: SensorsProbe(**timing(config.sensors)),
        "processes": lambda: ProcessesProbe(
            groups=config.processes.groups,
            proc=proc,
            cgroup=sys / "fs" / "cgroup",
            **timing(config.processes),
        ),
        "gpu": lambda: GpuProbe(
            sys=sys, xid_window=config.gpu.xid_window.total_seconds(), **timing(config.gpu)
        ),
        "endpoints": lambda: EndpointsProbe.from_config(config.endpoints),
        "custom": lambda: CustomProbe.from_config(config.custom),
        "units": lambda: UnitsProbe(
            units=config.units.units,
            restart_window=config.units.restart_window.total_seconds(),
            bus_address=config.units.bus,
            **timing(config.units),
        ),
        "kmsg": lambda: KmsgProbe(
            patterns=[KernelPattern.from_config(p) for p in config.kmsg.effective_patterns],
            path=config.kmsg.path,
            max_lines_per_second=config.kmsg.max_lines_per_second,
            **timing(config.kmsg),
        ),
    }
    return [factories[name]() for name in config.enabled()]
