"""The condition state machine: hold times, hysteresis, flap damping, series and restarts."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from agent.config import DEFAULT_RULES_FILE, RuleConfig
from agent.model import Condition, ConditionState, LabelSet, Sample, Severity, labelset
from agent.rules import ConditionTracker, Transition

FS = "nodemedic_filesystem_used_ratio"
MEM = "nodemedic_memory_used_ratio"
AVAIL = "nodemedic_memory_available_bytes"
ROOT = labelset(mountpoint="/", device="/dev/sda1", fstype="ext4")
DATA = labelset(mountpoint="/data", device="/dev/sdb1", fstype="xfs")
T0 = 1_700_000_000.0

OK = ConditionState.OK
PENDING = ConditionState.PENDING
FIRING = ConditionState.FIRING
RESOLVED = ConditionState.RESOLVED


def make_rule(**fields: Any) -> RuleConfig:
    """A rule as the config file would write it; defaults to filesystem-almost-full."""
    spec: dict[str, Any] = {
        "name": "filesystem-almost-full",
        "metric": FS,
        "op": ">",
        "threshold": 0.9,
        "clear": 0.85,
        "for": "2m",
        "severity": "warning",
        "description": "A filesystem is more than 90% full",
    }
    spec.update(fields)
    return RuleConfig.model_validate(spec)


def make_tracker(
    *rules: RuleConfig,
    restored: Sequence[Condition] = (),
    flap_window: float = 600,
    flap_limit: int = 3,
) -> ConditionTracker:
    return ConditionTracker(
        rules or (make_rule(),),
        flap_window=flap_window,
        flap_limit=flap_limit,
        restored=restored,
    )


def fs(value: float, labels: LabelSet = ROOT) -> Sample:
    return Sample(FS, value, labels)


def feed(tracker: ConditionTracker, value: float, now: float) -> list[Transition]:
    """One filesystem probe run reporting the root filesystem only."""
    return tracker.observe({FS}, [fs(value)], now)


def edges(transitions: Sequence[Transition]) -> list[tuple[ConditionState, ConditionState]]:
    return [(t.previous, t.condition.state) for t in transitions]


def only(tracker: ConditionTracker) -> Condition:
    conditions = tracker.conditions()
    assert len(conditions) == 1
    return conditions[0]


def fire_now(tracker: ConditionTracker, now: float) -> None:
    """Drive the root filesystem condition of a ``for: 0s`` rule to firing."""
    assert edges(feed(tracker, 0.95, now))[-1][1] is FIRING


# Transitions, one by one


def test_breach_fires_only_after_holding_for_the_hold_time() -> None:
    tracker = make_tracker()

    started = feed(tracker, 0.93, T0)
    assert edges(started) == [(OK, PENDING)]
    assert started[0].reason == "value 0.93 > 0.9; fires if it holds for 2m"
    assert started[0].event_type == "io.nodemedic.condition.pending"
    assert feed(tracker, 0.95, T0 + 60) == []
    assert feed(tracker, 0.95, T0 + 119.9) == []
    assert only(tracker).state is PENDING

    fired = feed(tracker, 0.94, T0 + 120)
    assert edges(fired) == [(PENDING, FIRING)]
    assert fired[0].reason == "value 0.94 > 0.9 for 2m"
    assert fired[0].event_type == "io.nodemedic.condition.firing"
    assert fired[0].condition.since == T0 + 120
    assert fired[0].condition.value == 0.94


def test_rule_without_hold_time_fires_on_the_first_breach() -> None:
    tracker = make_tracker(make_rule(**{"for": "0s"}))

    fired = feed(tracker, 0.95, T0)

    assert edges(fired) == [(OK, FIRING)]
    assert fired[0].reason == "value 0.95 > 0.9"


def test_firing_condition_holds_inside_the_hysteresis_band_and_resolves_at_clear() -> None:
    tracker = make_tracker(make_rule(**{"for": "0s"}))
    fire_now(tracker, T0)

    for step, value in enumerate([0.88, 0.86, 0.9, 0.851], start=1):
        assert feed(tracker, value, T0 + step) == []
        assert only(tracker).state is FIRING
    resolved = feed(tracker, 0.84, T0 + 10)

    assert edges(resolved) == [(FIRING, RESOLVED)]
    assert resolved[0].reason == "value 0.84 <= clear 0.85"
    assert resolved[0].event_type == "io.nodemedic.condition.resolved"
    assert resolved[0].condition.since == T0 + 10


def test_hysteresis_for_a_below_threshold_rule() -> None:
    low_memory = make_rule(
        name="memory-low", metric=AVAIL, op="<", threshold=1e9, clear=2e9, **{"for": "0s"}
    )
    tracker = make_tracker(low_memory)

    def observe(value: float, now: float) -> list[Transition]:
        return tracker.observe({AVAIL}, [Sample.of(AVAIL, value)], now)

    assert edges(observe(5e8, T0)) == [(OK, FIRING)]
    assert observe(1.5e9, T0 + 10) == []
    resolved = observe(2e9, T0 + 20)
    assert edges(resolved) == [(FIRING, RESOLVED)]
    assert resolved[0].reason == "value 2000000000 >= clear 2000000000"


def test_breach_that_lapses_before_the_hold_time_resolves_without_firing() -> None:
    tracker = make_tracker()
    feed(tracker, 0.93, T0)

    lapsed = feed(tracker, 0.89, T0 + 60)

    assert edges(lapsed) == [(PENDING, RESOLVED)]
    assert lapsed[0].reason == "value 0.89 <= 0.9; cleared before the 2m hold time"
    assert only(tracker).pending_since is None
    assert feed(tracker, 0.89, T0 + 600) == []


def test_resolved_condition_breaching_again_holds_afresh() -> None:
    tracker = make_tracker()
    feed(tracker, 0.93, T0)
    feed(tracker, 0.5, T0 + 30)

    assert edges(feed(tracker, 0.93, T0 + 40)) == [(RESOLVED, PENDING)]
    assert feed(tracker, 0.93, T0 + 159) == []
    assert edges(feed(tracker, 0.93, T0 + 160)) == [(PENDING, FIRING)]


def test_new_series_starts_ok_and_values_update_without_events() -> None:
    tracker = make_tracker()

    assert feed(tracker, 0.5, T0) == []
    assert feed(tracker, 0.6, T0 + 30) == []

    condition = only(tracker)
    assert (condition.state, condition.value, condition.since) == (OK, 0.6, T0)
    assert condition.severity is Severity.WARNING
    assert condition.description == "A filesystem is more than 90% full"


def test_last_sample_of_a_series_in_a_batch_counts() -> None:
    tracker = make_tracker(make_rule(**{"for": "0s"}))

    assert tracker.observe({FS}, [fs(0.95), fs(0.5)], T0) == []
    assert only(tracker).value == 0.5


def test_series_gone_resolves_active_conditions_and_drops_quiet_ones() -> None:
    tracker = make_tracker(make_rule(**{"for": "0s"}))
    tracker.observe({FS}, [fs(0.95, ROOT), fs(0.5, DATA)], T0)

    gone = tracker.observe({FS}, [], T0 + 30)

    assert edges(gone) == [(FIRING, RESOLVED)]
    assert gone[0].reason == "series gone"
    assert gone[0].condition.labels == ROOT
    assert gone[0].condition.value is None
    assert tracker.conditions() == []


def test_pending_condition_of_a_gone_series_resolves() -> None:
    tracker = make_tracker()
    feed(tracker, 0.95, T0)

    assert edges(tracker.observe({FS}, [fs(0.5, DATA)], T0 + 30)) == [(PENDING, RESOLVED)]
    assert [c.labels for c in tracker.conditions()] == [DATA]


def test_batch_not_covering_a_metric_leaves_its_conditions_alone() -> None:
    memory = make_rule(name="memory-almost-exhausted", metric=MEM, threshold=0.95, clear=0.9)
    tracker = make_tracker(make_rule(**{"for": "0s"}), memory)
    fire_now(tracker, T0)
    before = tracker.conditions()

    assert tracker.observe({MEM}, [Sample.of(MEM, 0.2)], T0 + 30) == []
    assert tracker.observe((), [], T0 + 60) == []

    after = {c.rule: c for c in tracker.conditions()}
    assert after["filesystem-almost-full"] == before[0]
    assert after["memory-almost-exhausted"].value == 0.2


@pytest.mark.parametrize(
    ("pattern", "mountpoint", "tracked"),
    [
        ("/", "/", True),
        ("/", "/data", False),
        ("~/(data|srv)(/.*)?", "/data", True),
        ("~/(data|srv)(/.*)?", "/srv/www", True),
        ("~/(data|srv)(/.*)?", "/var/data", False),
        ("~/(data|srv)(/.*)?", "/database", False),
    ],
)
def test_rule_labels_select_series(pattern: str, mountpoint: str, tracked: bool) -> None:
    tracker = make_tracker(make_rule(labels={"mountpoint": pattern}, **{"for": "0s"}))
    labels = labelset(mountpoint=mountpoint, device="/dev/sdc1", fstype="ext4")

    fired = tracker.observe({FS}, [fs(0.99, labels)], T0)

    assert edges(fired) == ([(OK, FIRING)] if tracked else [])
    assert [c.labels for c in tracker.conditions()] == ([labels] if tracked else [])


def test_each_rule_on_a_metric_keeps_its_own_condition() -> None:
    data = yaml.safe_load(DEFAULT_RULES_FILE.read_text(encoding="utf-8"))
    tracker = make_tracker(*(RuleConfig.model_validate(r) for r in data["rules"]))

    assert len(feed(tracker, 0.98, T0)) == 2
    full = feed(tracker, 0.98, T0 + 60)
    assert [(t.condition.rule, t.condition.state) for t in full] == [("filesystem-full", FIRING)]
    assert full[0].condition.severity is Severity.CRITICAL
    almost = feed(tracker, 0.96, T0 + 120)
    assert [t.condition.rule for t in almost] == ["filesystem-almost-full"]


def test_transitions_come_sorted_whatever_the_sample_order() -> None:
    tracker = make_tracker(make_rule(**{"for": "0s"}))
    labels = [labelset(mountpoint=f"/m{i}", device=f"/dev/vd{i}", fstype="ext4") for i in "dbca"]

    fired = tracker.observe({FS}, [fs(0.99, lab) for lab in labels], T0)

    assert [t.condition.labels for t in fired] == sorted(labels)


# NaN: unknown is neither a breach nor healthy


def test_nan_holds_a_firing_condition() -> None:
    tracker = make_tracker(make_rule(**{"for": "0s"}))
    fire_now(tracker, T0)

    assert feed(tracker, math.nan, T0 + 10) == []
    assert (only(tracker).state, only(tracker).value) == (FIRING, None)
    assert edges(feed(tracker, 0.5, T0 + 20)) == [(FIRING, RESOLVED)]


def test_nan_ends_a_pending_breach() -> None:
    tracker = make_tracker()
    feed(tracker, 0.95, T0)

    lapsed = feed(tracker, math.nan, T0 + 10)

    assert edges(lapsed) == [(PENDING, RESOLVED)]
    assert lapsed[0].reason == "value unknown; cleared before the 2m hold time"
    assert lapsed[0].event_data()["value"] is None


def test_nan_never_starts_a_breach_even_for_not_equal() -> None:
    tracker = make_tracker(make_rule(op="!=", threshold=1, clear=None, **{"for": "0s"}))

    assert feed(tracker, math.nan, T0) == []
    assert only(tracker).state is OK


# Restarts


def test_restored_firing_condition_stays_firing_without_a_new_event() -> None:
    before = make_tracker(make_rule(**{"for": "0s"}))
    fire_now(before, T0)

    after = make_tracker(make_rule(**{"for": "0s"}), restored=before.conditions())

    assert after.retire_removed(T0 + 5) == []
    assert feed(after, 0.95, T0 + 10) == []
    assert (only(after).state, only(after).since) == (FIRING, T0)
    assert edges(feed(after, 0.5, T0 + 20)) == [(FIRING, RESOLVED)]


def test_restored_pending_condition_counts_its_hold_from_the_original_breach() -> None:
    before = make_tracker()
    feed(before, 0.95, T0)

    after = make_tracker(restored=before.conditions())

    assert feed(after, 0.95, T0 + 100) == []
    assert edges(feed(after, 0.95, T0 + 120)) == [(PENDING, FIRING)]


def test_restored_condition_takes_the_rules_new_severity_and_description() -> None:
    before = make_tracker(make_rule(**{"for": "0s"}))
    fire_now(before, T0)
    stricter = make_rule(severity="critical", description="Disk nearly full", **{"for": "0s"})

    after = make_tracker(stricter, restored=before.conditions())

    assert (only(after).severity, only(after).description) == (
        Severity.CRITICAL,
        "Disk nearly full",
    )
    resolved = feed(after, 0.5, T0 + 10)
    assert resolved[0].event_data()["severity"] == "critical"


def test_retire_removed_resolves_active_conditions_of_removed_rules() -> None:
    firing = make_rule(name="old-firing", **{"for": "0s"})
    quiet = make_rule(name="old-quiet", threshold=0.99, clear=None, **{"for": "0s"})
    before = make_tracker(firing, quiet, make_rule())
    before.observe({FS}, [fs(0.95)], T0)

    after = make_tracker(make_rule(), restored=before.conditions())
    assert [(c.rule, c.state) for c in after.conditions()] == [
        ("filesystem-almost-full", PENDING),
        ("old-firing", FIRING),
        ("old-quiet", OK),
    ]
    retired = after.retire_removed(T0 + 10)

    assert edges(retired) == [(FIRING, RESOLVED)]
    assert retired[0].condition.rule == "old-firing"
    assert retired[0].reason == "rule removed"
    assert retired[0].condition.since == T0 + 10
    assert retired[0].event_data()["op"] is None
    assert [c.rule for c in after.conditions()] == ["filesystem-almost-full"]
    assert after.retire_removed(T0 + 20) == []


def test_restored_conditions_of_series_a_rule_no_longer_matches_are_retired() -> None:
    before = make_tracker(make_rule(**{"for": "0s"}))
    fire_now(before, T0)
    data_only = make_rule(labels={"mountpoint": "/data"}, **{"for": "0s"})

    after = make_tracker(data_only, restored=before.conditions())
    retired = after.retire_removed(T0 + 10)

    assert edges(retired) == [(FIRING, RESOLVED)]
    assert retired[0].reason == "rule no longer matches the series"
    assert after.conditions() == []


# Flap damping


def flap(tracker: ConditionTracker, times: int, start: float) -> float:
    """Fire and resolve ``times`` times, ten seconds apart; return the last time used."""
    now = start
    for _ in range(times):
        fire_now(tracker, now)
        now += 10
        assert edges(feed(tracker, 0.5, now)) == [(FIRING, RESOLVED)]
        now += 10
    return now - 10


def test_flapping_condition_stays_firing_until_clear_for_a_whole_window() -> None:
    tracker = make_tracker(make_rule(**{"for": "0s"}), flap_window=600, flap_limit=3)
    now = flap(tracker, 2, T0)
    third = feed(tracker, 0.95, now + 10)
    assert third[0].event_data()["flapping"] is True

    assert feed(tracker, 0.5, now + 20) == []  # clear, but flapping: held
    assert feed(tracker, 0.95, now + 300) == []  # back above clear: the wait starts over
    assert feed(tracker, 0.5, now + 310) == []
    assert feed(tracker, 0.5, now + 909) == []
    assert only(tracker).state is FIRING
    resolved = feed(tracker, 0.5, now + 910)

    assert edges(resolved) == [(FIRING, RESOLVED)]
    assert resolved[0].reason == "value 0.5 <= clear 0.85 for 10m (flapping)"
    assert resolved[0].event_data()["flapping"] is True


def test_firings_outside_the_flap_window_do_not_count() -> None:
    tracker = make_tracker(make_rule(**{"for": "0s"}), flap_window=600, flap_limit=3)
    flap(tracker, 2, T0)
    fire_now(tracker, T0 + 700)

    assert only(tracker).flaps == (T0 + 700,)
    assert edges(feed(tracker, 0.5, T0 + 710)) == [(FIRING, RESOLVED)]


def test_flap_wait_survives_a_restart() -> None:
    before = make_tracker(make_rule(**{"for": "0s"}), flap_window=600, flap_limit=2)
    now = flap(before, 1, T0)
    fire_now(before, now + 10)
    assert feed(before, 0.5, now + 20) == []

    after = make_tracker(
        make_rule(**{"for": "0s"}), restored=before.conditions(), flap_window=600, flap_limit=2
    )

    assert feed(after, 0.5, now + 619) == []
    assert edges(feed(after, 0.5, now + 620)) == [(FIRING, RESOLVED)]


# Events


def test_event_data_is_json_and_describes_the_rule() -> None:
    tracker = make_tracker(make_rule(labels={"mountpoint": "~/.*"}))
    feed(tracker, 0.93, T0)

    fired = feed(tracker, 0.93, T0 + 120)[0]
    data = json.loads(json.dumps(fired.event_data(), allow_nan=False))

    assert data == {
        "rule": "filesystem-almost-full",
        "state": "firing",
        "previous": "pending",
        "severity": "warning",
        "labels": {"mountpoint": "/", "device": "/dev/sda1", "fstype": "ext4"},
        "value": 0.93,
        "op": ">",
        "threshold": 0.9,
        "clear": 0.85,
        "for": 120.0,
        "description": "A filesystem is more than 90% full",
        "reason": "value 0.93 > 0.9 for 2m",
        "since": "2023-11-14T22:15:20Z",
        "flapping": False,
    }


def test_event_data_clear_defaults_to_the_threshold() -> None:
    tracker = make_tracker(make_rule(clear=None, **{"for": "0s"}))

    assert feed(tracker, 0.95, T0)[0].event_data()["clear"] == 0.9


# Construction


def test_duplicate_rule_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate rule name 'filesystem-almost-full'"):
        make_tracker(make_rule(), make_rule(threshold=0.95))


@pytest.mark.parametrize(("window", "limit"), [(-1.0, 3), (math.nan, 3), (600.0, 0)])
def test_invalid_flap_settings_are_rejected(window: float, limit: int) -> None:
    with pytest.raises(ValueError, match="flap_"):
        make_tracker(flap_window=window, flap_limit=limit)


def test_rules_are_returned_as_given() -> None:
    rules = (make_rule(name="b"), make_rule(name="a"))

    assert list(make_tracker(*rules).rules()) == list(rules)


# Properties

VALUES = st.one_of(
    st.sampled_from([0.5, 0.85, 0.87, 0.9, 0.95, 1.0, math.nan]),
    st.floats(min_value=0, max_value=1),
)
STEPS = st.lists(
    st.tuples(VALUES, st.integers(min_value=0, max_value=400), st.booleans()),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(
    steps=STEPS,
    hold=st.sampled_from(["0s", "30s", "2m"]),
    flap_limit=st.integers(min_value=1, max_value=4),
)
def test_transitions_change_state_and_chain(
    steps: list[tuple[float, int, bool]], hold: str, flap_limit: int
) -> None:
    tracker = make_tracker(make_rule(**{"for": hold}), flap_window=300, flap_limit=flap_limit)
    now = T0
    state: ConditionState | None = None
    for value, step, present in steps:
        now += step
        transitions = feed(tracker, value, now) if present else tracker.observe({FS}, [], now)
        assert len(transitions) <= 1
        for transition in transitions:
            assert transition.previous is not transition.condition.state
            assert transition.previous is (OK if state is None else state)
        if not present:
            state = None
            assert tracker.conditions() == []
        else:
            state = only(tracker).state
            if transitions:
                assert transitions[-1].condition == only(tracker)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), op=st.sampled_from([">", "<"]))
def test_values_inside_the_hysteresis_band_emit_nothing(data: st.DataObject, op: str) -> None:
    threshold, clear = (0.9, 0.85) if op == ">" else (0.1, 0.15)
    tracker = make_tracker(make_rule(op=op, threshold=threshold, clear=clear, **{"for": "0s"}))
    assert edges(feed(tracker, 0.95 if op == ">" else 0.05, T0)) == [(OK, FIRING)]
    low, high = sorted((threshold, clear))
    band = st.floats(min_value=low, max_value=high, exclude_min=op == ">", exclude_max=op == "<")

    values = data.draw(st.lists(band, min_size=1, max_size=30))
    for step, value in enumerate(values, start=1):
        assert feed(tracker, value, T0 + step * 60) == []
    assert (only(tracker).state, only(tracker).value) == (FIRING, values[-1])


MACHINE_VALUES = st.one_of(
    st.sampled_from([0.5, 0.85, 0.87, 0.9, 0.93, 0.95, math.nan]),
    st.floats(min_value=0, max_value=1),
)

SECONDS = st.sampled_from([0, 1, 15, 30, 60, 119, 120, 150, 299, 300, 301])


class ConditionMachine(RuleBasedStateMachine):
    """Random values, time steps, vanishing series and restarts against a reference model.

    The reference sees only the inputs and the firing times: when the current run of
    breaching values began, when the current run of clear values began, and when the
    condition fired. A twin tracker that is never restarted must behave exactly like the
    restarted one.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.window = 300.0
        self.rule = make_rule()
        self.limit = 3
        self.tracker = self.build(())
        self.twin = self.build(())
        self.breach_since: float | None = None
        self.clear_since: float | None = None
        self.fired_at: list[float] = []

    def build(self, restored: Sequence[Condition]) -> ConditionTracker:
        return make_tracker(
            self.rule, restored=restored, flap_window=self.window, flap_limit=self.limit
        )

    def recent_firings(self) -> int:
        return sum(1 for at in self.fired_at if self.now - at < self.window)

    @initialize(hold=st.sampled_from(["0s", "30s", "2m"]), limit=st.integers(2, 3))
    def configure(self, hold: str, limit: int) -> None:
        self.rule = make_rule(**{"for": hold})
        self.limit = limit
        self.tracker = self.build(())
        self.twin = self.build(())

    @rule(value=st.sampled_from([0.91, 0.95, 1.0]), seconds=SECONDS)
    def breach(self, value: float, seconds: int) -> None:
        self.sample(value, seconds)

    @rule(value=st.sampled_from([0.0, 0.5, 0.85]), seconds=SECONDS)
    def clear(self, value: float, seconds: int) -> None:
        self.sample(value, seconds)

    @rule(value=MACHINE_VALUES, seconds=SECONDS)
    def sample(self, value: float, seconds: int) -> None:
        self.now += seconds
        transitions = feed(self.tracker, value, self.now)
        assert transitions == feed(self.twin, value, self.now)
        hold = self.rule.for_.total_seconds()
        breach, clear = value > 0.9, value <= 0.85  # both False for NaN
        self.breach_since = (self.breach_since or self.now) if breach else None
        if not math.isnan(value):  # unknown neither starts nor ends a run of clear values
            self.clear_since = (self.clear_since or self.now) if clear else None
        for transition in transitions:
            if transition.condition.state is FIRING:
                assert self.breach_since is not None
                assert self.now - self.breach_since >= hold, "fired before the hold time"
                self.fired_at.append(self.now)
            if transition.previous is FIRING:
                assert clear, "resolved without a clear value"
                assert self.clear_since is not None
                waited = self.now - self.clear_since >= self.window
                first_clear = self.clear_since == self.now
                assert waited or (first_clear and self.recent_firings() < self.limit)
        condition = only(self.tracker)
        assert condition.value == (None if math.isnan(value) else value)
        if self.breach_since is not None and self.now - self.breach_since >= hold:
            assert condition.state is FIRING, "breach held for the hold time, yet not firing"
        if condition.state is FIRING and clear and self.clear_since is not None:
            assert self.now - self.clear_since < self.window, "flap wait overran"
            assert self.recent_firings() >= self.limit or self.clear_since < self.now

    @rule()
    def series_gone(self) -> None:
        transitions = self.tracker.observe({FS}, [], self.now)
        assert transitions == self.twin.observe({FS}, [], self.now)
        assert all(t.reason == "series gone" for t in transitions)
        assert self.tracker.conditions() == []
        self.breach_since = self.clear_since = None
        self.fired_at = []

    @rule()
    def probe_failed(self) -> None:
        before = self.tracker.conditions()
        assert self.tracker.observe((), [], self.now) == []
        assert self.twin.observe((), [], self.now) == []
        assert self.tracker.conditions() == before

    @rule()
    def restart(self) -> None:
        before = self.tracker.conditions()
        self.tracker = self.build(before)
        assert self.tracker.retire_removed(self.now) == []
        assert self.tracker.conditions() == before

    @invariant()
    def matches_the_reference(self) -> None:
        assert self.tracker.conditions() == self.twin.conditions()
        for condition in self.tracker.conditions():
            if condition.state is PENDING:
                assert condition.pending_since == self.breach_since


ConditionMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestConditionMachine = ConditionMachine.TestCase
