"""One table of every figure the benchmarks wrote under bench/results, with its reference.

Reads the JSON files each bench writes (those missing are left out, e.g. the units bench
when not run as root) and prints the headline figures: absolute values, the reference
measured in the same run, and the ratio. Writes bench/results/summary.json.

Usage: python -m bench.report
"""

from __future__ import annotations

import json
from typing import Any

from bench.common import RESULTS, write_result

Row = tuple[str, float | None, str, float | None, str]
"""(figure, value, unit, reference value, reference name)."""


def _load(name: str) -> Any:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def overhead_rows(data: Any) -> list[Row]:
    """Agent CPU and RSS per count of extra processes, beside node_exporter."""
    rows: list[Row] = []
    scrape = data.get("scrape_seconds", 15)
    for count, entry in data.items():
        if not isinstance(entry, dict) or "median" not in entry:
            continue
        median = entry["median"]
        label = f"agent CPU %, {count} extra procs (/metrics every {scrape:g}s)"
        rows.append(
            (label, median["agent_cpu_percent"], "%", median["node_exporter_cpu_percent"], "n_e")
        )
        rows.append(
            (
                f"agent RSS, {count} extra procs",
                median["agent_rss_mib"],
                "MiB",
                median["node_exporter_rss_mib"],
                "n_e",
            )
        )
    rows.append(("import floor RSS", data["import_floor_mib"], "MiB", None, ""))
    return rows


def metrics_rows(data: Any) -> list[Row]:
    """CPU per scrape and p99 per case, beside node_exporter."""
    rows: list[Row] = []
    for name, entry in data.items():
        median = entry["median"]
        agent, ref = median["agent"], median["node_exporter"]
        rows.append(
            (
                f"/metrics {name}: CPU/scrape",
                agent["cpu_ms_per_scrape"],
                "ms",
                ref["cpu_ms_per_scrape"],
                "n_e",
            )
        )
        rows.append((f"/metrics {name}: p50", agent["p50_ms"], "ms", ref["p50_ms"], "n_e"))
        rows.append((f"/metrics {name}: p99", agent["p99_ms"], "ms", ref["p99_ms"], "n_e"))
    return rows


def scan_rows(data: Any) -> list[Row]:
    """The processes probe per process beside a plain /proc reader."""
    return [
        (
            f"process scan 'probe all', {count} started",
            row["probe all"],
            "us/proc",
            row["plain /proc"],
            "plain /proc",
        )
        for count, row in data.items()
    ]


def mqtt_rows(data: Any) -> list[Row]:
    """Every MQTT figure beside mosquitto_pub."""
    return [
        (f"MQTT {key}", entry["agent"], "", entry["mosquitto_pub"], "mosquitto_pub")
        for key, entry in data["median"].items()
    ]


def units_rows(data: Any) -> list[Row]:
    """The unit state change to rules latency."""
    stats = data["signal_to_rules"]
    return [
        ("unit signal -> rules p50", stats["p50_ms"], "ms", None, ""),
        ("unit signal -> rules p99", stats["p99_ms"], "ms", None, ""),
    ]


def _latency(label: str, stats: Any) -> list[Row]:
    return [
        (f"{label} p50", stats["p50_ms"], "ms", None, ""),
        (f"{label} p99", stats["p99_ms"], "ms", None, ""),
    ]


def detection_rows(data: Any) -> list[Row]:
    """Breach to the event at an MQTT subscriber: a unit failing, a disk filling (polled)."""
    rows: list[Row] = []
    if "unit failed -> firing" in data:
        rows += _latency("unit failed -> MQTT event", data["unit failed -> firing"])
    disk = [key for key in data if key.startswith("disk full -> firing")]
    if disk:
        interval = data["disk_interval_seconds"]
        rows += _latency(f"disk full -> MQTT event (probe every {interval:g}s)", data[disk[0]])
    return rows


def remediation_rows(data: Any) -> list[Row]:
    """A unit's crash to the engine having it active again."""
    return _latency(
        "unit crash -> active by remediation", data["crash -> unit active (engine restart)"]
    )


def main() -> None:
    """Print the summary table and write it as JSON."""
    rows: list[Row] = []
    for name, build in (
        ("agent_overhead", overhead_rows),
        ("metrics_scrape", metrics_rows),
        ("process_scan", scan_rows),
        ("mqtt_throughput", mqtt_rows),
        ("units_latency", units_rows),
        ("detection_latency", detection_rows),
        ("remediation_latency", remediation_rows),
    ):
        data = _load(name)
        if data is not None:
            rows += build(data)
    print(f"\n{'figure':58s} {'value':>10s} {'unit':>8s} {'reference':>10s} {'ratio':>7s}  of")
    for label, value, unit, ref, ref_name in rows:
        ratio = value / ref if value is not None and ref else None
        print(
            f"{label:58s} {_fmt(value):>10s} {unit:>8s} {_fmt(ref):>10s} "
            f"{'' if ratio is None else f'{ratio:.2f}':>7s}  {ref_name}"
        )
    summary = [
        {"figure": label, "value": value, "unit": unit, "reference": ref, "of": ref_name}
        for label, value, unit, ref, ref_name in rows
    ]
    print(f"  written to {write_result('summary', summary)}")


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
