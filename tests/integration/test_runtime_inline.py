"""Inline probes in the running agent: their readings reach the rules, a hang elsewhere
does not stall them, and a slow one is moved to its thread without losing a reading.

The probes are real :class:`MemoryProbe` instances over a fixture ``/proc`` tree (the
inline path) and test_runtime's gated :class:`BlockingProbe`, whose reads block behind a
gate (the threaded path, a dead NFS mount say).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config import AgentSettings, RuleConfig
from agent.model import ConditionState, Sample
from agent.probes.base import INLINE_LIMIT, Probe
from agent.probes.memory import MemoryProbe
from agent.runtime import Agent
from tests.integration.test_runtime import GatedLoadProbe

MEMORY_HIGH = RuleConfig.model_validate(
    {
        "name": "memory-high",
        "metric": "nodemedic_memory_used_ratio",
        "op": ">",
        "threshold": 0.9,
        "severity": "warning",
    }
)
PROBE_FAILING = RuleConfig.model_validate(
    {"name": "probe-failing", "metric": "nodemedic_probe_up", "op": "<", "threshold": 1}
)
# 95 % used: MemAvailable is 5 % of MemTotal.
MEMINFO = (
    "MemTotal:       16000000 kB\nMemFree:          500000 kB\n"
    "MemAvailable:     800000 kB\nSwapTotal:             0 kB\nSwapFree:              0 kB\n"
)
VMSTAT = "pswpin 0\npswpout 0\n"


class RecordingMemoryProbe(MemoryProbe):
    """A memory probe that notes the thread each reading ran in, and can be made slow."""

    def __init__(self, proc: Path) -> None:
        super().__init__(proc=proc, interval=0.05, timeout=1.0, page_size=4096)
        self.threads: list[str] = []
        self.delay = 0.0

    def collect(self) -> list[Sample]:
        """The real reading, after ``delay`` seconds of blocking."""
        self.threads.append(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)  # stands for a kernel file that blocks
        return super().collect()


def _proc(tmp_path: Path) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").write_text(MEMINFO)
    (proc / "vmstat").write_text(VMSTAT)
    return proc


def _settings(tmp_path: Path) -> AgentSettings:
    return AgentSettings(
        state_dir=tmp_path / "state", api={"enabled": False}, rules=(MEMORY_HIGH, PROBE_FAILING)
    )


async def _until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10.0
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.02)


def _state(agent: Agent, rule: str, **labels: str) -> ConditionState | None:
    wanted = tuple(sorted(labels.items()))
    found = [c.state for c in agent.conditions() if c.rule == rule and c.labels == wanted]
    return found[0] if found else None


def _runs(agent: Agent, name: str) -> int:
    return next(s.runs for s in agent.probe_statuses() if s.name == name)


@pytest.mark.asyncio
async def test_an_inline_probe_feeds_the_rules_while_a_threaded_probe_hangs(
    tmp_path: Path,
) -> None:
    gate = threading.Event()
    memory = RecordingMemoryProbe(_proc(tmp_path))
    probes: list[Probe] = [memory, GatedLoadProbe(gate)]
    agent = Agent(_settings(tmp_path), probes=probes)
    task = asyncio.create_task(agent.run())
    try:
        await _until(lambda: _state(agent, "memory-high") is ConditionState.FIRING)
        await _until(lambda: _state(agent, "probe-failing", probe="load") is ConditionState.FIRING)
        runs = _runs(agent, "memory")
        await _until(lambda: _runs(agent, "memory") >= runs + 5)  # not stalled by the hang

        status = {s.name: s for s in agent.probe_statuses()}
        assert status["memory"].up
        assert status["load"].error is not None
        assert "hung" in status["load"].error or "within" in status["load"].error
        assert set(memory.threads) == {threading.current_thread().name}, "read on the loop"
        assert memory.runs_inline
    finally:
        gate.set()
        agent.request_stop()
        await asyncio.wait_for(task, 5)


@pytest.mark.asyncio
async def test_a_slow_inline_probe_moves_to_its_thread_and_keeps_reporting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    memory = RecordingMemoryProbe(_proc(tmp_path))
    memory.delay = INLINE_LIMIT * 3
    agent = Agent(_settings(tmp_path), probes=[memory])
    task = asyncio.create_task(agent.run())
    try:
        with caplog.at_level(logging.WARNING, logger="agent.probes.base"):
            await _until(lambda: not memory.runs_inline)
            memory.delay = 0.0
            runs = _runs(agent, "memory")
            await _until(lambda: _runs(agent, "memory") >= runs + 3)

        assert memory.threads[-1].startswith("probe-memory_")
        assert _state(agent, "memory-high") is ConditionState.FIRING
        assert next(s for s in agent.probe_statuses() if s.name == "memory").up
        moved = [r for r in caplog.records if "worker thread from now on" in r.getMessage()]
        assert len(moved) == 1, "logged once, on the move"
    finally:
        agent.request_stop()
        await asyncio.wait_for(task, 5)
