"""What a Prometheus scrape of the agent shows."""

from __future__ import annotations

import collections
import logging
import os
import platform
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import prometheus_client
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent import __version__
from agent.metrics import PROCESS_METRIC_NAMES, AgentCollector, build_registry
from agent.model import Condition, ConditionState, ProbeStatus, Sample, Severity, labelset
from agent.probes.catalog import CATALOG, MetricKind, MetricSpec

from .fake_view import AWKWARD_LABEL_VALUE, T0, FakeAgentView, busy_view

REPO = Path(__file__).resolve().parents[2]
PROMTOOL_CACHE = REPO / ".cache" / "promtool" / "usr" / "bin" / "promtool"

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(view: FakeAgentView) -> str:
    """The text a scrape of ``view`` returns (the registry's fast path, as /metrics serves)."""
    return build_registry(view).render().decode()


def without_process_series(text: str) -> str:
    """``text`` without the agent process's own series, which move between two reads."""
    kept = []
    for line in text.splitlines(keepends=True):
        name = line.split(" ")[2] if line.startswith("# ") else line
        if not name.startswith("process_"):
            kept.append(line)
    return "".join(kept)


def series_of(text: str) -> Series:
    """Every sample as (exposed name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(series: Series, name: str, **labels: str) -> float:
    """One sample's value; fails the test when the series is missing."""
    key = (name, frozenset(labels.items()))
    assert key in series, f"{name}{labels} missing from the scrape"
    return series[key]


def names_in(series: Series, name: str) -> list[dict[str, str]]:
    """The label sets of every series of ``name``."""
    return [dict(labels) for sample, labels in series if sample == name]


def type_lines(text: str) -> dict[str, list[str]]:
    """Exposed family name -> every type declared for it (one entry per TYPE line)."""
    declared: dict[str, list[str]] = collections.defaultdict(list)
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            declared[name].append(kind)
    return declared


def help_lines(text: str) -> dict[str, str]:
    """Exposed family name -> help text."""
    helps: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, doc = line.removeprefix("# HELP ").partition(" ")
            helps[name] = doc
    return helps


def test_catalog_gauges_carry_their_labels_and_values() -> None:
    view = FakeAgentView(
        samples=[
            Sample.of("nodemedic_load1", 0.75),
            Sample.of(
                "nodemedic_filesystem_used_ratio",
                0.5,
                mountpoint="/var",
                device="/dev/sda2",
                fstype="ext4",
            ),
            Sample.of("nodemedic_temperature_celsius", 71.5, chip="coretemp", sensor="core0"),
        ]
    )

    text = scrape(view)
    series = series_of(text)

    assert value(series, "nodemedic_load1") == 0.75
    assert (
        value(
            series,
            "nodemedic_filesystem_used_ratio",
            mountpoint="/var",
            device="/dev/sda2",
            fstype="ext4",
        )
        == 0.5
    )
    assert value(series, "nodemedic_temperature_celsius", chip="coretemp", sensor="core0") == 71.5
    declared = type_lines(text)
    assert declared["nodemedic_load1"] == ["gauge"]
    assert declared["nodemedic_filesystem_used_ratio"] == ["gauge"]
    assert help_lines(text)["nodemedic_load1"] == CATALOG["nodemedic_load1"].help


def test_catalog_counters_are_exposed_under_their_catalog_name() -> None:
    view = FakeAgentView(
        samples=[
            Sample.of("nodemedic_disk_read_bytes_total", 4096.0, device="sda"),
            Sample.of("nodemedic_swap_in_bytes_total", 10.0),
        ]
    )

    text = scrape(view)

    assert type_lines(text)["nodemedic_disk_read_bytes_total"] == ["counter"]
    assert 'nodemedic_disk_read_bytes_total{device="sda"} 4096.0' in text.splitlines()
    assert "nodemedic_swap_in_bytes_total 10.0" in text.splitlines()
    assert "_total_total" not in text


def test_every_catalog_metric_is_one_family_with_catalog_type_and_help() -> None:
    text = scrape(busy_view())

    declared = type_lines(text)
    helps = help_lines(text)
    for spec in CATALOG.values():
        assert declared[spec.name] == [spec.kind.value], spec.name
        assert helps[spec.name] == spec.help.replace("\\", "\\\\"), spec.name
    assert all(len(kinds) == 1 for kinds in declared.values()), "a family is declared twice"
    for name, kinds in declared.items():
        if kinds == ["counter"]:
            assert name.endswith("_total"), name
            assert name.count("_total") == 1, name
        else:
            assert not name.endswith("_total"), name


def test_awkward_label_values_survive_the_round_trip() -> None:
    series = series_of(scrape(busy_view()))

    assert (
        value(
            series,
            "nodemedic_disk_io_utilisation_ratio",
            device=f"device-{AWKWARD_LABEL_VALUE}",
        )
        == 0.25
    )
    assert value(series, "nodemedic_bus_dropped_events_total", subscriber=AWKWARD_LABEL_VALUE) == 1


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_any_label_value_round_trips(label_value: str) -> None:
    view = FakeAgentView(samples=[Sample.of("nodemedic_network_up", 1.0, interface=label_value)])

    series = series_of(scrape(view))

    assert value(series, "nodemedic_network_up", interface=label_value) == 1.0


def test_condition_state_has_every_state_for_every_rule() -> None:
    def condition(rule: str, state: ConditionState, device: str) -> Condition:
        return Condition(rule, labelset(device=device), state, Severity.WARNING, 1.0, T0)

    view = FakeAgentView(
        tracked=[
            condition("disk_slow", ConditionState.FIRING, "sda"),
            condition("disk_slow", ConditionState.FIRING, "sdb"),
            condition("disk_slow", ConditionState.PENDING, "sdc"),
            condition("nic_errors", ConditionState.RESOLVED, "sda"),
        ]
    )

    series = series_of(scrape(view))

    expected = {
        ("disk_slow", "ok"): 0,
        ("disk_slow", "pending"): 1,
        ("disk_slow", "firing"): 2,
        ("disk_slow", "resolved"): 0,
        ("nic_errors", "ok"): 0,
        ("nic_errors", "pending"): 0,
        ("nic_errors", "firing"): 0,
        ("nic_errors", "resolved"): 1,
    }
    shown = {
        (labels["rule"], labels["state"]): value(series, "nodemedic_condition_state", **labels)
        for labels in names_in(series, "nodemedic_condition_state")
    }
    assert shown == expected
    assert value(series, "nodemedic_conditions_firing") == 2


def test_probe_up_appears_once_per_probe_and_statuses_win() -> None:
    view = FakeAgentView(
        statuses=[
            ProbeStatus("cpu", 10.0, last_run=T0, duration=0.01, runs=3),
            ProbeStatus("memory", 10.0, last_run=T0, duration=0.02, error="boom", runs=3),
        ],
        samples=[
            Sample.of("nodemedic_probe_up", 0.0, probe="cpu"),
            Sample.of("nodemedic_probe_up", 1.0, probe="mqtt"),
        ],
    )

    text = scrape(view)
    series = series_of(text)

    assert type_lines(text)["nodemedic_probe_up"] == ["gauge"]
    assert help_lines(text)["nodemedic_probe_up"] == CATALOG["nodemedic_probe_up"].help
    assert sorted(labels["probe"] for labels in names_in(series, "nodemedic_probe_up")) == [
        "cpu",
        "memory",
        "mqtt",
    ]
    assert value(series, "nodemedic_probe_up", probe="cpu") == 1
    assert value(series, "nodemedic_probe_up", probe="memory") == 0
    assert value(series, "nodemedic_probe_up", probe="mqtt") == 1


def test_probe_durations_runs_and_failures() -> None:
    view = FakeAgentView(
        statuses=[
            ProbeStatus("cpu", 10.0, last_run=T0, duration=0.25, runs=7, failures=2),
            ProbeStatus("sensors", 30.0),
        ]
    )

    text = scrape(view)
    series = series_of(text)

    assert value(series, "nodemedic_probe_duration_seconds", probe="cpu") == 0.25
    assert names_in(series, "nodemedic_probe_duration_seconds") == [{"probe": "cpu"}], (
        "a probe that never ran has no duration"
    )
    assert value(series, "nodemedic_probe_runs_total", probe="cpu") == 7
    assert value(series, "nodemedic_probe_failures_total", probe="cpu") == 2
    assert value(series, "nodemedic_probe_runs_total", probe="sensors") == 0
    assert value(series, "nodemedic_probe_up", probe="sensors") == 0
    assert type_lines(text)["nodemedic_probe_runs_total"] == ["counter"]


def test_agent_series_are_read_at_scrape_time() -> None:
    view = FakeAgentView(
        emitted={"io.nodemedic.condition.firing": 4},
        dropped={"history": 3},
        lag=0.125,
    )
    registry = build_registry(view)

    before = series_of(generate_latest(registry).decode())
    view.ready = False
    view.emitted["io.nodemedic.condition.firing"] = 5
    after = series_of(generate_latest(registry).decode())

    assert value(before, "nodemedic_events_total", type="io.nodemedic.condition.firing") == 4
    assert value(after, "nodemedic_events_total", type="io.nodemedic.condition.firing") == 5
    assert value(before, "nodemedic_bus_dropped_events_total", subscriber="history") == 3
    assert value(before, "nodemedic_event_loop_lag_seconds") == 0.125
    assert value(before, "nodemedic_agent_ready") == 1
    assert value(after, "nodemedic_agent_ready") == 0
    assert (
        value(before, "nodemedic_build_info", version=__version__, python=platform.python_version())
        == 1
    )


def test_empty_agent_still_declares_its_own_families() -> None:
    text = scrape(FakeAgentView())

    declared = type_lines(text)
    assert declared["nodemedic_events_total"] == ["counter"]
    assert declared["nodemedic_condition_state"] == ["gauge"]
    assert declared["nodemedic_probe_up"] == ["gauge"]
    assert value(series_of(text), "nodemedic_conditions_firing") == 0


def test_unknown_metric_is_skipped_and_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    view = FakeAgentView(
        samples=[Sample.of("nodemedic_bogus_ratio", 0.5), Sample.of("nodemedic_load5", 1.5)]
    )

    with caplog.at_level(logging.DEBUG, logger="agent.metrics"):
        text = scrape(view)

    assert "nodemedic_bogus_ratio" not in text
    assert value(series_of(text), "nodemedic_load5") == 1.5
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("nodemedic_bogus_ratio" in r.getMessage() for r in debug)


def test_sample_with_labels_unlike_the_catalog_is_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    view = FakeAgentView(
        samples=[
            Sample.of("nodemedic_filesystem_used_ratio", 0.5, mountpoint="/", device="sda1"),
            Sample.of("nodemedic_load1", 0.5, host="extra"),
            Sample.of("nodemedic_network_up", 1.0, interface="eth0"),
        ]
    )

    with caplog.at_level(logging.DEBUG, logger="agent.metrics"):
        series = series_of(scrape(view))

    assert names_in(series, "nodemedic_filesystem_used_ratio") == []
    assert names_in(series, "nodemedic_load1") == []
    assert value(series, "nodemedic_network_up", interface="eth0") == 1
    assert any("nodemedic_filesystem_used_ratio" in r.getMessage() for r in caplog.records)


def test_labels_in_any_order_are_matched_to_the_catalog() -> None:
    # Not canonical (unsorted) on purpose: a sample built by hand must still be exposed.
    labels = (("mountpoint", "/"), ("device", "sda1"), ("fstype", "xfs"))
    view = FakeAgentView(samples=[Sample("nodemedic_filesystem_readonly", 1.0, labels)])

    series = series_of(scrape(view))

    assert (
        value(series, "nodemedic_filesystem_readonly", mountpoint="/", device="sda1", fstype="xfs")
        == 1
    )


def test_a_repeated_series_is_exposed_once_with_its_last_value() -> None:
    view = FakeAgentView(
        samples=[
            Sample.of("nodemedic_network_up", 0.0, interface="eth0"),
            Sample.of("nodemedic_network_up", 1.0, interface="eth0"),
        ]
    )

    text = scrape(view)

    assert [line for line in text.splitlines() if line.startswith("nodemedic_network_up")] == [
        'nodemedic_network_up{interface="eth0"} 1.0'
    ]


def test_samples_are_read_in_a_single_pass() -> None:
    view = busy_view()
    expected = len(view.samples)
    view.one_shot_samples = True

    series = series_of(scrape(view))

    catalog_series = [key for key in series if key[0] in CATALOG and key[0] != "nodemedic_probe_up"]
    probe_up_from_samples = [s for s in view.samples if s.metric == "nodemedic_probe_up"]
    assert len(catalog_series) == expected - len(probe_up_from_samples)


def test_registry_is_private_to_the_agent() -> None:
    view = FakeAgentView(samples=[Sample.of("nodemedic_load1", 0.5)])

    first, second = build_registry(view), build_registry(view)

    assert first is not second
    assert b"nodemedic_load1" in generate_latest(first)
    assert b"nodemedic_" not in generate_latest(prometheus_client.REGISTRY)


def test_catalog_entries_that_cannot_be_exposed_as_named_are_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gauge = MetricKind.GAUGE
    catalog: Mapping[str, MetricSpec] = {
        "x_reads": MetricSpec("x_reads", "t", MetricKind.COUNTER, "", (), "Reads."),
        "x_level_total": MetricSpec("x_level_total", "t", gauge, "", (), "Level."),
        "nodemedic_agent_ready": MetricSpec("nodemedic_agent_ready", "t", gauge, "", (), "Dup."),
        "x_ok": MetricSpec("x_ok", "t", gauge, "", (), "Fine."),
    }
    view = FakeAgentView(
        samples=[Sample.of(name, 3.0) for name in catalog],
        ready=False,
    )
    registry = CollectorRegistry()

    with caplog.at_level(logging.WARNING, logger="agent.metrics"):
        registry.register(AgentCollector(view, catalog=catalog))
    text = generate_latest(registry).decode()

    assert "x_reads" not in text
    assert "x_level_total" not in text
    assert "x_ok 3.0" in text.splitlines()
    assert "nodemedic_agent_ready 0.0" in text.splitlines()
    assert type_lines(text)["nodemedic_agent_ready"] == ["gauge"]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "x_reads" in warned
    assert "x_level_total" in warned
    assert "nodemedic_agent_ready" in warned


def promtool() -> str:
    """Path of promtool: $NODEMEDIC_PROMTOOL, the Makefile's extraction, or PATH."""
    configured = os.environ.get("NODEMEDIC_PROMTOOL")
    if configured:
        if not Path(configured).is_file():
            pytest.fail(
                f"NODEMEDIC_PROMTOOL={configured} is not a file: run `make test`, which "
                "extracts promtool there, or point the variable at a promtool binary",
                pytrace=False,
            )
        return configured
    if PROMTOOL_CACHE.is_file():
        return str(PROMTOOL_CACHE)
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            f"promtool not found (not in $NODEMEDIC_PROMTOOL, {PROMTOOL_CACHE} or PATH): "
            "run `make test`, which extracts it from the Debian prometheus package",
            pytrace=False,
        )
    return found


def promtool_check(text: str) -> tuple[int, str]:
    """(exit status, everything promtool printed) for ``promtool check metrics``."""
    done = subprocess.run(
        [promtool(), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).strip()


@pytest.mark.promtool
def test_promtool_accepts_the_exposition_without_warnings() -> None:
    status, printed = promtool_check(scrape(busy_view()))

    assert printed == ""
    assert status == 0


def test_mqtt_series_follow_the_link_and_the_outbox() -> None:
    view = busy_view()
    series = series_of(scrape(view))

    assert value(series, "nodemedic_mqtt_connected") == 0.0
    assert value(series, "nodemedic_mqtt_publishes_total", result="acked") == 1234
    assert value(series, "nodemedic_mqtt_publishes_total", result="failed") == 3
    assert value(series, "nodemedic_mqtt_reconnects_total") == 7
    assert value(series, "nodemedic_mqtt_connect_failures_total", reason="network") == 7
    assert value(series, "nodemedic_mqtt_connect_failures_total", reason="auth") == 0
    assert value(series, "nodemedic_mqtt_outbox_events") == 42
    assert value(series, "nodemedic_mqtt_outbox_bytes") == 21000
    assert value(series, "nodemedic_mqtt_outbox_oldest_age_seconds") == 12.5
    assert value(series, "nodemedic_mqtt_outbox_shed_events_total") == 2


def test_without_mqtt_there_are_no_mqtt_series() -> None:
    text = scrape(FakeAgentView())
    assert "nodemedic_mqtt_connected" not in text
    assert "nodemedic_mqtt_outbox_events" not in text


def test_agent_exposes_its_own_cpu_and_memory() -> None:
    series = series_of(scrape(FakeAgentView()))

    exposed = {name for name, _ in series}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= exposed
    assert value(series, "process_resident_memory_bytes") > 0
    assert {name for name in exposed if name.startswith("process_")} <= PROCESS_METRIC_NAMES


def test_firing_conditions_are_counted_by_severity_with_every_severity_present() -> None:
    def condition(rule: str, state: ConditionState, severity: Severity) -> Condition:
        return Condition(rule, labelset(), state, severity, 1.0, T0)

    view = FakeAgentView(
        tracked=[
            condition("disk-full", ConditionState.FIRING, Severity.CRITICAL),
            condition("disk-almost-full", ConditionState.FIRING, Severity.WARNING),
            condition("oom", ConditionState.FIRING, Severity.CRITICAL),
            condition("load", ConditionState.PENDING, Severity.CRITICAL),
        ]
    )

    series = series_of(scrape(view))

    by_severity = "nodemedic_conditions_firing_by_severity"
    assert value(series, by_severity, severity="critical") == 2
    assert value(series, by_severity, severity="warning") == 1
    assert value(series, by_severity, severity="info") == 0


def test_fast_rendering_writes_what_generate_latest_writes() -> None:
    view = busy_view()
    view.samples = [
        *view.samples,
        Sample.of("nodemedic_bogus_ratio", 0.5),
        Sample.of("nodemedic_load1", 0.5, host="extra"),
        Sample.of("nodemedic_network_up", 0.0, interface='a"b\\c\nd'),
        Sample.of("nodemedic_network_up", 1.0, interface='a"b\\c\nd'),
        Sample.of("nodemedic_load5", float("nan")),
        Sample.of("nodemedic_load15", float("inf")),
        Sample.of("nodemedic_memory_total_bytes", 1.5e12),
        Sample(
            "nodemedic_filesystem_readonly",
            1.0,
            (("mountpoint", "/"), ("device", "sda1"), ("fstype", "xfs")),
        ),
    ]
    registry = build_registry(view)

    fast = without_process_series(registry.render().decode())
    reference = without_process_series(generate_latest(registry).decode())

    assert fast == reference


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["nodemedic_network_up", "nodemedic_disk_io_utilisation_ratio"]),
            st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
            st.floats(allow_nan=False),
        ),
        max_size=8,
    )
)
def test_fast_rendering_matches_generate_latest_for_any_samples(
    rows: list[tuple[str, str, float]],
) -> None:
    label = {"nodemedic_network_up": "interface", "nodemedic_disk_io_utilisation_ratio": "device"}
    view = FakeAgentView(samples=[Sample.of(m, v, **{label[m]: text}) for m, text, v in rows])
    registry = build_registry(view)

    fast = without_process_series(registry.render().decode())

    assert fast == without_process_series(generate_latest(registry).decode())


def test_a_new_reading_is_served_at_the_next_scrape_and_an_unchanged_one_reused() -> None:
    view = FakeAgentView(samples=[Sample.of("nodemedic_load1", 0.5)])
    registry = build_registry(view)

    first = series_of(registry.render().decode())
    view.ready = False
    unchanged = series_of(registry.render().decode())
    view.samples = [Sample.of("nodemedic_load1", 0.75), Sample.of("nodemedic_load5", 0.25)]
    changed = series_of(registry.render().decode())

    assert value(first, "nodemedic_load1") == 0.5
    assert value(unchanged, "nodemedic_load1") == 0.5
    assert value(unchanged, "nodemedic_agent_ready") == 0
    assert value(changed, "nodemedic_load1") == 0.75
    assert value(changed, "nodemedic_load5") == 0.25
