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
    "DiskioProbe",
    "FdsProbe",
    "FilesystemProbe",
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
    "build_probes",
]

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from agent.probes.base import AnyProbe, BlockingProbe, Probe, ProbeEvent, ProbeUpdate, PushProbe
from agent.probes.clock import ClockProbe
from agent.probes.cpu import CpuProbe
from agent.probes.diskio import DiskioProbe
from agent.probes.fds import FdsProbe
from agent.probes.filesystem import FilesystemProbe
from agent.probes.load import LoadProbe
from agent.probes.memory import MemoryProbe
from agent.probes.network import NetworkProbe
from agent.probes.pressure import PressureProbe
from agent.probes.processes import ProcessesProbe
from agent.probes.sensors import SensorsProbe

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
            sys=sys,
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
    }
    return [factories[name]() for name in config.enabled()]
