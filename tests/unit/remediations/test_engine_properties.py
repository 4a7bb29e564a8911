"""Stateful property tests: random triggers, clock steps, failures and crashes never break a limit.

A real SQLite store and the recording test actions (tests.remediation_actions) back the
engine; only the clock is simulated. A crash abandons the event loop the engine ran on
(its tasks never run again, as after SIGKILL) and a new engine reconciles the journal.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from remediations.breaker import BreakerState, breaker_status
from remediations.model import RunState
from tests import remediation_actions
from tests.remediation_actions import read_log
from tests.unit.remediations.engine_fixture import EngineRig, playbook

TARGETS = ("/a", "/b", "/c")
COOLDOWN = 60.0
RATE = (3, 600.0)
FAILURES = 2
RESET_AFTER = 300.0


class EngineMachine(RuleBasedStateMachine):
    """Triggers, clock steps, step failures, releases of blocked steps, crashes."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="engine-prop-"))
        self.log = self.dir / "steps.log"
        self.gate_file = self.dir / "release"
        params = {"log": str(self.log), "wait_for": str(self.gate_file)}
        safety = {
            "cooldown": f"{COOLDOWN:g}s",
            "max_runs": {"count": RATE[0], "per": f"{RATE[1]:g}s"},
            "breaker": {"failures": FAILURES, "reset_after": f"{RESET_AFTER:g}s"},
            "loop_guard": {"returns": 5, "within": "1s"},
        }
        self.books = [
            playbook(
                "disruptive",
                disruptive=True,
                steps=[
                    {"action": "test.record", "params": {"log": str(self.log), "note": "pre"}},
                    {"action": "test.record_disruptive", "params": {**params, "note": "act"}},
                ],
                safety=safety,
            ),
            playbook(
                "gentle",
                trigger={"conditions": ["filesystem-almost-full"]},
                steps=[{"action": "test.record", "params": {**params, "note": "gentle"}}],
                safety=safety,
            ),
        ]
        self.loop = asyncio.new_event_loop()
        self.old_loops: list[asyncio.AbstractEventLoop] = []
        self.rig = EngineRig(self.dir, self.books)
        remediation_actions.FAILING.clear()

    def teardown(self) -> None:
        self.rig.store.close()
        self.loop.close()
        for loop in self.old_loops:
            loop.close()
        remediation_actions.FAILING.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self, coro_fn: object) -> None:
        async def go() -> None:
            coro_fn()  # type: ignore[operator]
            await self.rig.settle()

        self.loop.run_until_complete(go())

    @rule(
        mount=st.sampled_from(TARGETS),
        rule_name=st.sampled_from(["filesystem-full", "filesystem-almost-full"]),
    )
    def trigger(self, mount: str, rule_name: str) -> None:
        self._run(lambda: self.rig.fire(mount, rule_name))

    @rule(mount=st.sampled_from(TARGETS))
    def resolve(self, mount: str) -> None:
        self.rig.resolve(mount)

    @rule(seconds=st.sampled_from([1.0, 30.0, 61.0, 200.0, 301.0, 700.0]))
    def advance(self, seconds: float) -> None:
        self.rig.now += seconds

    @rule(mount=st.sampled_from(TARGETS), fail=st.booleans())
    def failing(self, mount: str, fail: bool) -> None:
        if fail:
            remediation_actions.FAILING.add(mount)
        else:
            remediation_actions.FAILING.discard(mount)

    @rule()
    def release(self) -> None:
        self.gate_file.touch()

        async def go() -> None:
            await self.rig.engine.drain(10.0)

        self.loop.run_until_complete(go())
        self.gate_file.unlink()

    @rule()
    def crash(self) -> None:
        self.old_loops.append(self.loop)
        self.loop = asyncio.new_event_loop()
        self._run(self.rig.restart)

    # -- invariants over the journal and the step log --

    def _runs(self) -> list[tuple[str, str, str, float | None, float | None, str]]:
        rows = self.rig.store.query(
            "t", "SELECT id, playbook, target, started, finished, state FROM runs ORDER BY id"
        )
        return [tuple(r) for r in rows]

    @invariant()
    def no_disruptive_step_applied_twice_for_one_run(self) -> None:
        applied = Counter(
            line["run"] for line in read_log(self.log) if line["action"] == "test.record_disruptive"
        )
        assert all(count == 1 for count in applied.values()), applied

    @invariant()
    def cooldown_and_rate_limit_hold(self) -> None:
        started: dict[str, list[tuple[str, float]]] = {}
        for _, book, target, start, _, _ in self._runs():
            if start is not None:
                started.setdefault(book, []).append((target, start))
        for book, runs in started.items():
            last: dict[str, float] = {}
            for target, start in runs:
                if target in last:
                    assert start - last[target] >= COOLDOWN, (book, target, start, last)
                last[target] = start
            times = sorted(s for _, s in runs)
            for i, start in enumerate(times):
                in_window = [t for t in times[: i + 1] if start - RATE[1] < t <= start]
                assert len(in_window) <= RATE[0], (book, times)

    @invariant()
    def concurrency_holds(self) -> None:
        active = self.rig.engine.journal.in_states((RunState.RUNNING, RunState.VERIFYING))
        assert sum(1 for r in active if r.disruptive) <= 1, active
        targets = Counter(r.target for r in active)
        assert all(n == 1 for n in targets.values()), active

    @invariant()
    def no_run_starts_while_its_breaker_is_open(self) -> None:
        journal = self.rig.engine.journal
        for book in self.books:
            history = journal.history(book.name)
            for run in history:
                if run.started is None:
                    continue
                before = [r for r in history if r.finished is not None and r.finished < run.started]
                status = breaker_status(before, book.safety.breaker, run.started)
                assert status.state is not BreakerState.OPEN, (run, status)


EngineMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEngineProperties = EngineMachine.TestCase
