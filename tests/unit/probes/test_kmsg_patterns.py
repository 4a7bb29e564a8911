"""Kernel log patterns: the defaults against real kernel lines, counts, conditions, config.

Each file under tests/fixtures/kmsg holds real kernel wording in /dev/kmsg's record format,
with its expectations in ``#`` comments: ``expect: pattern=count ...`` (every other
default pattern must count 0), ``event: pattern key=value ...`` (the events, in order,
with data they must carry) and ``condition: pattern=0|1`` (the condition afterwards).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.config import KmsgProbeConfig
from agent.config_kmsg import KmsgPatternConfig, default_kmsg_patterns
from agent.probes.base import ProbeEvent
from agent.probes.kmsg_match import KernelLogMatcher, KernelPattern, SlidingCount
from agent.probes.kmsg_record import KmsgRecord, RecordSplitter, parse_record
from tests.conftest import REPO

from .fakes import ManualClock

FIXTURES = sorted((REPO / "tests" / "fixtures" / "kmsg").glob("*.txt"))


@dataclass
class Fixture:
    records: list[KmsgRecord]
    counts: dict[str, int] = field(default_factory=dict)
    events: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    conditions: dict[str, float] = field(default_factory=dict)


def _load(path: Path) -> Fixture:
    text = path.read_text(encoding="utf-8")
    splitter = RecordSplitter()
    raw = "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))
    records = [parse_record(t) for t in splitter.feed(raw.encode()) + splitter.flush()]
    fixture = Fixture(records)
    for line in text.splitlines():
        key, _, rest = line.removeprefix("# ").partition(": ")
        words = rest.split()
        if key == "expect":
            fixture.counts = {w.split("=")[0]: int(w.split("=")[1]) for w in words}
        elif key == "event":
            fixture.events.append((words[0], dict(w.split("=", 1) for w in words[1:])))
        elif key == "condition":
            name, value = words[0].split("=")
            fixture.conditions[name] = float(value)
    return fixture


def _defaults() -> list[KernelPattern]:
    return [KernelPattern.from_config(p) for p in default_kmsg_patterns()]


def _values(matcher: KernelLogMatcher, metric: str) -> dict[str, float]:
    return {dict(s.labels)["pattern"]: s.value for s in matcher.samples() if s.metric == metric}


def _feed(matcher: KernelLogMatcher, records: Sequence[KmsgRecord]) -> list[ProbeEvent]:
    return [event for record in records for event in matcher.feed(record)]


def _record(message: str, *, facility: int = 0, seq: int = 1) -> KmsgRecord:
    return KmsgRecord(facility, 3, seq, 1_000_000, "-", message)


def test_there_is_a_fixture_for_every_kind_of_trouble() -> None:
    names = {path.stem for path in FIXTURES}
    assert {"oom-kill", "hung-task", "lockup", "io-error", "filesystem", "hardware"} <= names
    assert {"nic-link", "segfault", "oops", "quiet"} <= names


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_default_patterns_match_real_kernel_lines(path: Path) -> None:
    fixture = _load(path)
    matcher = KernelLogMatcher(_defaults(), clock=ManualClock())

    events = _feed(matcher, fixture.records)

    counts = _values(matcher, "nodemedic_kernel_pattern_matches")
    assert {name: n for name, n in counts.items() if n} == fixture.counts
    seen = [
        (e.data["pattern"], {k: str(e.data.get(k)) for k in want})
        for e, (_, want) in zip(events, fixture.events, strict=False)
    ]
    assert seen == fixture.events
    assert len(events) == len(fixture.events)
    conditions = _values(matcher, "nodemedic_kernel_condition")
    assert {name: conditions[name] for name in fixture.conditions} == fixture.conditions


def test_an_oom_kill_event_names_the_victim() -> None:
    matcher = KernelLogMatcher(_defaults(), clock=ManualClock())
    line = (
        "Out of memory: Killed process 3121 (stress-ng-vm) total-vm:8184852kB, "
        "anon-rss:7760876kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:15260kB oom_score_adj:1000"
    )

    (event,) = matcher.feed(_record(line, seq=77))

    assert event.type == "io.nodemedic.kernel.oom_kill"
    assert event.subject == "stress-ng-vm"
    assert event.data["pid"] == 3121
    assert event.data["process"] == "stress-ng-vm"
    assert event.data["message"] == line
    assert (event.data["level"], event.data["seq"]) == ("err", 77)


def test_lines_written_from_userspace_cannot_fake_a_kernel_problem() -> None:
    matcher = KernelLogMatcher(_defaults(), clock=ManualClock())

    events = matcher.feed(
        _record("Out of memory: Killed process 1 (init) total-vm:1kB", facility=1)
    )

    assert events == []
    assert _values(matcher, "nodemedic_kernel_pattern_matches")["oom-kill"] == 0


def _condition(**extra: Any) -> KernelPattern:
    config = KmsgPatternConfig.model_validate(
        {"name": "ro", "kind": "condition", "regex": r"EXT4-fs \((?P<device>\w+)\): Remounting"}
        | extra
    )
    return KernelPattern.from_config(config)


def test_a_condition_sets_on_a_match_and_clears_on_its_clearing_line() -> None:
    clock = ManualClock()
    matcher = KernelLogMatcher([_condition(clear="re-mounted")], clock=clock)

    assert _values(matcher, "nodemedic_kernel_condition") == {"ro": 0.0}
    (event,) = matcher.feed(_record("EXT4-fs (sda1): Remounting filesystem read-only"))
    assert (event.type, event.subject) == ("io.nodemedic.kernel.ro", None)
    assert _values(matcher, "nodemedic_kernel_condition") == {"ro": 1.0}
    # Set already: a second match is counted but raises no second event.
    assert matcher.feed(_record("EXT4-fs (sdb1): Remounting filesystem read-only")) == []
    assert matcher.feed(_record("EXT4-fs (sda1): re-mounted. Opts: (null)")) == []

    assert _values(matcher, "nodemedic_kernel_condition") == {"ro": 0.0}
    assert _values(matcher, "nodemedic_kernel_pattern_matches") == {"ro": 2}


def test_a_condition_clears_after_its_timeout_without_a_new_match() -> None:
    clock = ManualClock()
    matcher = KernelLogMatcher([_condition(timeout="5m")], clock=clock)
    matcher.feed(_record("EXT4-fs (sda1): Remounting filesystem read-only"))
    assert matcher.next_deadline() == clock.now + 300

    clock.advance(200)
    matcher.feed(_record("EXT4-fs (sda1): Remounting filesystem read-only"))  # restarts it
    clock.advance(299)
    matcher.expire()
    assert _values(matcher, "nodemedic_kernel_condition") == {"ro": 1.0}

    clock.advance(1)
    matcher.expire()
    assert _values(matcher, "nodemedic_kernel_condition") == {"ro": 0.0}
    assert matcher.next_deadline() is None


def test_counts_cover_the_window_and_fall_as_it_slides() -> None:
    clock = ManualClock(start=0.0)
    pattern = KernelPattern.from_config(
        KmsgPatternConfig(
            name="oom", kind="event", regex="Killed process", window=timedelta(minutes=10)
        )
    )
    matcher = KernelLogMatcher([pattern], clock=clock)

    for _ in range(5):
        matcher.feed(_record("Killed process 1 (x)"))
        clock.advance(60)
    assert _values(matcher, "nodemedic_kernel_pattern_matches") == {"oom": 5}  # 5 in 10 minutes

    clock.advance(6 * 60)  # the first kill is now 11 minutes old
    assert _values(matcher, "nodemedic_kernel_pattern_matches") == {"oom": 4}
    clock.advance(10 * 60)
    assert _values(matcher, "nodemedic_kernel_pattern_matches") == {"oom": 0}


def test_a_storm_of_matches_raises_at_most_max_events_per_window_but_counts_all() -> None:
    clock = ManualClock(start=0.0)
    config = KmsgPatternConfig(
        name="segv", kind="event", regex="segfault", max_events=3, window=timedelta(minutes=5)
    )
    matcher = KernelLogMatcher([KernelPattern.from_config(config)], clock=clock)

    events = _feed(matcher, [_record(f"a[{n}]: segfault at 0") for n in range(100)])

    assert len(events) == 3
    assert _values(matcher, "nodemedic_kernel_pattern_matches") == {"segv": 100}
    clock.advance(5 * 60 + 10)
    assert len(matcher.feed(_record("a[1]: segfault at 0"))) == 1


def test_sliding_count_memory_is_bounded() -> None:
    count = SlidingCount(60.0)
    for step in range(10_000):
        count.add(step * 0.5)
    assert count.total(5000.0) <= 121
    assert len(count._slices) <= 61


# -- configuration -------------------------------------------------------------------


def test_default_patterns_cover_every_kind_of_trouble_in_the_brief() -> None:
    names = {p.name for p in default_kmsg_patterns()}
    assert {
        "oom-kill", "hung-task", "soft-lockup", "hard-lockup", "io-error", "filesystem-error",
        "filesystem-readonly", "machine-check", "edac-corrected", "edac-uncorrected",
        "nic-link-down", "segfault",
    } <= names  # fmt: skip


def test_patterns_replace_defaults_by_name_extend_them_and_disable_them() -> None:
    config = KmsgProbeConfig.model_validate(
        {
            "patterns": [
                {"name": "oom-kill", "kind": "event", "regex": "Killed process", "window": "30m"},
                {"name": "my-driver", "kind": "condition", "regex": "mydrv: stuck", "clear": "ok"},
            ],
            "disabled_patterns": ["nic-link-down"],
        }
    )

    patterns = {p.name: p for p in config.effective_patterns}
    assert patterns["oom-kill"].window == timedelta(minutes=30)
    assert "nic-link-down" not in patterns
    assert list(patterns)[-1] == "my-driver"
    assert patterns["my-driver"].event_type == "io.nodemedic.kernel.my_driver"
    no_defaults = KmsgProbeConfig.model_validate(
        {"default_patterns": False, "patterns": [{"name": "x", "kind": "event", "regex": "x"}]}
    )
    assert [p.name for p in no_defaults.effective_patterns] == ["x"]


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ({"kind": "event", "regex": "Killed (process"}, "pattern 'p': regex: invalid regular"),
        ({"kind": "evnt", "regex": "x"}, "pattern 'p': kind: unknown kind 'evnt'"),
        ({"kind": "condition", "regex": "x"}, "pattern 'p': clear: a condition needs"),
        ({"kind": "condition", "regex": "x", "clear": "("}, "pattern 'p': clear: invalid"),
        ({"kind": "event", "regex": "x", "clear": "y"}, "pattern 'p': clear/timeout apply"),
        ({"kind": "event", "regex": "(?P<a>x)", "subject": "{b}"}, "pattern 'p': subject: {b}"),
        ({"kind": "event", "regex": "x", "type": "Bad Type"}, "pattern 'p': type:"),
    ],
)
def test_bad_patterns_are_refused_naming_the_pattern_and_field(
    pattern: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        KmsgPatternConfig.model_validate({"name": "p", **pattern})


def test_disabling_an_unknown_default_names_the_valid_ones() -> None:
    with pytest.raises(ValidationError, match=r"'oom' is not a default pattern.*oom-kill"):
        KmsgProbeConfig.model_validate({"disabled_patterns": ["oom"]})
