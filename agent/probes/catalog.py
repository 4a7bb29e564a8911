"""Every metric a probe can produce: name, type, unit, labels and help.

The catalog is the contract between probes, rules and /metrics: a rule may only
name a metric listed here (checked at config load), a probe may only emit
metrics of its own entries (checked by the tests), and /metrics takes help text
and type from here.
"""

from __future__ import annotations

__all__ = ["CATALOG", "PROBE_NAMES", "MetricKind", "MetricSpec", "metrics_of"]

import enum
from dataclasses import dataclass


class MetricKind(enum.StrEnum):
    """Prometheus metric type."""

    GAUGE = "gauge"
    COUNTER = "counter"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric family.

    Attributes:
        name: Prometheus name (counters end in ``_total``).
        probe: the probe that emits it (``agent`` for the agent's own health series).
        kind: gauge or counter.
        unit: shown by ``nodemedic check`` (``ratio``, ``bytes``, ``seconds``, ``celsius``...).
        labels: label names every sample of this metric carries.
        help: one line for /metrics.
    """

    name: str
    probe: str
    kind: MetricKind
    unit: str
    labels: tuple[str, ...]
    help: str


PROBE_NAMES: tuple[str, ...] = (
    "cpu",
    "memory",
    "load",
    "pressure",
    "filesystem",
    "diskio",
    "network",
    "fds",
    "clock",
    "sensors",
    "processes",
)

G = MetricKind.GAUGE
C = MetricKind.COUNTER
_FS = ("mountpoint", "device", "fstype")
_PSI = ("resource",)
_GROUP = ("group",)

_SPECS: tuple[MetricSpec, ...] = (
    # cpu
    MetricSpec(
        "nodemedic_cpu_utilisation_ratio",
        "cpu",
        G,
        "ratio",
        (),
        "Share of CPU time not idle (and not iowait) over the last interval, all cores.",
    ),
    MetricSpec(
        "nodemedic_cpu_iowait_ratio",
        "cpu",
        G,
        "ratio",
        (),
        "Share of CPU time idle waiting for I/O over the last interval.",
    ),
    MetricSpec(
        "nodemedic_cpu_steal_ratio",
        "cpu",
        G,
        "ratio",
        (),
        "Share of CPU time stolen by the hypervisor over the last interval.",
    ),
    MetricSpec("nodemedic_cpu_cores", "cpu", G, "cores", (), "Logical CPUs online."),
    # memory
    MetricSpec("nodemedic_memory_total_bytes", "memory", G, "bytes", (), "Total usable memory."),
    MetricSpec(
        "nodemedic_memory_available_bytes",
        "memory",
        G,
        "bytes",
        (),
        "Memory available for new work without swapping (MemAvailable).",
    ),
    MetricSpec(
        "nodemedic_memory_used_ratio", "memory", G, "ratio", (), "1 - MemAvailable / MemTotal."
    ),
    MetricSpec("nodemedic_swap_total_bytes", "memory", G, "bytes", (), "Total swap space."),
    MetricSpec(
        "nodemedic_swap_used_ratio",
        "memory",
        G,
        "ratio",
        (),
        "Share of swap in use (0 when there is no swap).",
    ),
    MetricSpec(
        "nodemedic_swap_in_bytes_total",
        "memory",
        C,
        "bytes",
        (),
        "Bytes swapped in from disk since boot.",
    ),
    MetricSpec(
        "nodemedic_swap_out_bytes_total",
        "memory",
        C,
        "bytes",
        (),
        "Bytes swapped out to disk since boot.",
    ),
    MetricSpec(
        "nodemedic_swap_io_bytes_per_second",
        "memory",
        G,
        "bytes/s",
        (),
        "Swap-in plus swap-out rate over the last interval.",
    ),
    # load
    MetricSpec("nodemedic_load1", "load", G, "", (), "1-minute load average."),
    MetricSpec("nodemedic_load5", "load", G, "", (), "5-minute load average."),
    MetricSpec("nodemedic_load15", "load", G, "", (), "15-minute load average."),
    MetricSpec(
        "nodemedic_load5_per_core",
        "load",
        G,
        "",
        (),
        "5-minute load average divided by the number of logical CPUs.",
    ),
    # pressure
    MetricSpec(
        "nodemedic_pressure_some_avg10_ratio",
        "pressure",
        G,
        "ratio",
        _PSI,
        "Share of time some tasks stalled on the resource, 10 s average (PSI).",
    ),
    MetricSpec(
        "nodemedic_pressure_some_avg60_ratio",
        "pressure",
        G,
        "ratio",
        _PSI,
        "Share of time some tasks stalled on the resource, 60 s average (PSI).",
    ),
    MetricSpec(
        "nodemedic_pressure_full_avg10_ratio",
        "pressure",
        G,
        "ratio",
        _PSI,
        "Share of time all non-idle tasks stalled on the resource, 10 s average (PSI).",
    ),
    MetricSpec(
        "nodemedic_pressure_full_avg60_ratio",
        "pressure",
        G,
        "ratio",
        _PSI,
        "Share of time all non-idle tasks stalled on the resource, 60 s average (PSI).",
    ),
    # filesystem
    MetricSpec(
        "nodemedic_filesystem_size_bytes", "filesystem", G, "bytes", _FS, "Filesystem size."
    ),
    MetricSpec(
        "nodemedic_filesystem_avail_bytes",
        "filesystem",
        G,
        "bytes",
        _FS,
        "Bytes available to unprivileged users.",
    ),
    MetricSpec(
        "nodemedic_filesystem_used_ratio",
        "filesystem",
        G,
        "ratio",
        _FS,
        "Used share of the filesystem as df reports it: used / (used + avail).",
    ),
    MetricSpec(
        "nodemedic_filesystem_inodes_used_ratio",
        "filesystem",
        G,
        "ratio",
        _FS,
        "Used share of the filesystem's inodes (0 where inodes are not limited).",
    ),
    MetricSpec(
        "nodemedic_filesystem_readonly",
        "filesystem",
        G,
        "bool",
        _FS,
        "1 when the filesystem is mounted read-only.",
    ),
    # diskio
    MetricSpec(
        "nodemedic_disk_io_utilisation_ratio",
        "diskio",
        G,
        "ratio",
        ("device",),
        "Share of the last interval the device was busy with I/O.",
    ),
    MetricSpec(
        "nodemedic_disk_read_await_seconds",
        "diskio",
        G,
        "seconds",
        ("device",),
        "Mean time per completed read over the last interval.",
    ),
    MetricSpec(
        "nodemedic_disk_write_await_seconds",
        "diskio",
        G,
        "seconds",
        ("device",),
        "Mean time per completed write over the last interval.",
    ),
    MetricSpec(
        "nodemedic_disk_read_bytes_total",
        "diskio",
        C,
        "bytes",
        ("device",),
        "Bytes read since boot.",
    ),
    MetricSpec(
        "nodemedic_disk_written_bytes_total",
        "diskio",
        C,
        "bytes",
        ("device",),
        "Bytes written since boot.",
    ),
    # network
    MetricSpec(
        "nodemedic_network_up",
        "network",
        G,
        "bool",
        ("interface",),
        "1 when the interface's operational state is up.",
    ),
    MetricSpec(
        "nodemedic_network_receive_bytes_total",
        "network",
        C,
        "bytes",
        ("interface",),
        "Bytes received since boot.",
    ),
    MetricSpec(
        "nodemedic_network_transmit_bytes_total",
        "network",
        C,
        "bytes",
        ("interface",),
        "Bytes transmitted since boot.",
    ),
    MetricSpec(
        "nodemedic_network_receive_errors_total",
        "network",
        C,
        "",
        ("interface",),
        "Receive errors since boot.",
    ),
    MetricSpec(
        "nodemedic_network_transmit_errors_total",
        "network",
        C,
        "",
        ("interface",),
        "Transmit errors since boot.",
    ),
    MetricSpec(
        "nodemedic_network_receive_drops_total",
        "network",
        C,
        "",
        ("interface",),
        "Received packets dropped since boot.",
    ),
    MetricSpec(
        "nodemedic_network_transmit_drops_total",
        "network",
        C,
        "",
        ("interface",),
        "Transmitted packets dropped since boot.",
    ),
    MetricSpec(
        "nodemedic_network_errors_per_second",
        "network",
        G,
        "1/s",
        ("interface",),
        "Receive and transmit errors plus drops per second over the last interval.",
    ),
    # fds
    MetricSpec(
        "nodemedic_fds_allocated",
        "fds",
        G,
        "",
        (),
        "File handles allocated system-wide (/proc/sys/fs/file-nr).",
    ),
    MetricSpec("nodemedic_fds_max", "fds", G, "", (), "System-wide file handle limit."),
    MetricSpec(
        "nodemedic_fds_used_ratio", "fds", G, "ratio", (), "Allocated file handles over the limit."
    ),
    # clock
    MetricSpec(
        "nodemedic_clock_synchronised",
        "clock",
        G,
        "bool",
        (),
        "1 when the kernel reports the clock synchronised (adjtimex, no STA_UNSYNC).",
    ),
    MetricSpec(
        "nodemedic_clock_offset_seconds",
        "clock",
        G,
        "seconds",
        (),
        "Kernel's current clock offset estimate.",
    ),
    MetricSpec(
        "nodemedic_clock_maxerror_seconds",
        "clock",
        G,
        "seconds",
        (),
        "Kernel's maximum clock error estimate.",
    ),
    # sensors
    MetricSpec(
        "nodemedic_temperature_celsius",
        "sensors",
        G,
        "celsius",
        ("chip", "sensor"),
        "Temperature reported by a hardware sensor.",
    ),
    MetricSpec(
        "nodemedic_temperature_critical_celsius",
        "sensors",
        G,
        "celsius",
        ("chip", "sensor"),
        "Critical temperature of a hardware sensor, where known.",
    ),
    # processes: one series per configured group
    MetricSpec(
        "nodemedic_process_group_processes",
        "processes",
        G,
        "",
        _GROUP,
        "Processes in the group.",
    ),
    MetricSpec(
        "nodemedic_process_group_missing",
        "processes",
        G,
        "bool",
        _GROUP,
        "1 when the group has fewer processes than its min_count (default 1).",
    ),
    MetricSpec(
        "nodemedic_process_group_cpu_cores",
        "processes",
        G,
        "cores",
        _GROUP,
        "CPU time (user + system) per second over the last interval; 1 is one core busy.",
    ),
    MetricSpec(
        "nodemedic_process_group_rss_bytes",
        "processes",
        G,
        "bytes",
        _GROUP,
        "Resident memory of the group's processes, summed.",
    ),
    MetricSpec(
        "nodemedic_process_group_rss_over_limit",
        "processes",
        G,
        "bool",
        _GROUP,
        "1 when the group's RSS is above its max_rss_bytes (only for groups that set it).",
    ),
    MetricSpec(
        "nodemedic_process_group_fds",
        "processes",
        G,
        "",
        _GROUP,
        "Open file descriptors of the group's processes, summed (those the agent may read).",
    ),
    MetricSpec(
        "nodemedic_process_group_fds_limit_ratio",
        "processes",
        G,
        "ratio",
        _GROUP,
        "Highest share of its soft RLIMIT_NOFILE any process of the group has open.",
    ),
    MetricSpec(
        "nodemedic_process_group_threads",
        "processes",
        G,
        "",
        _GROUP,
        "Threads of the group's processes, summed.",
    ),
    MetricSpec(
        "nodemedic_process_group_zombies",
        "processes",
        G,
        "",
        _GROUP,
        "Processes of the group that are zombies (exited, not yet reaped).",
    ),
    MetricSpec(
        "nodemedic_process_group_restarts_total",
        "processes",
        C,
        "",
        _GROUP,
        "Runs in which a group that has had processes gained new PIDs (respawns), "
        "since the agent started.",
    ),
    MetricSpec(
        "nodemedic_process_group_oldest_age_seconds",
        "processes",
        G,
        "seconds",
        _GROUP,
        "Age of the group's oldest process (absent while the group is empty).",
    ),
    # the agent's own health, usable by rules
    MetricSpec(
        "nodemedic_probe_up",
        "agent",
        G,
        "bool",
        ("probe",),
        "1 when the probe's last run succeeded in time, 0 when it failed or hung.",
    ),
    MetricSpec(
        "nodemedic_mqtt_outbox_used_ratio",
        "agent",
        G,
        "ratio",
        (),
        "Fullness of the MQTT outbox: the larger of events and bytes over their bounds; "
        "at 1 it sheds events.",
    ),
)

CATALOG: dict[str, MetricSpec] = {spec.name: spec for spec in _SPECS}


def metrics_of(probe: str) -> tuple[MetricSpec, ...]:
    """The catalog entries a probe emits."""
    return tuple(spec for spec in _SPECS if spec.probe == probe)
