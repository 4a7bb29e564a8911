"""Kernel log lines through the whole agent: default patterns, default rules, events.

The kmsg probe reads a FIFO standing in for /dev/kmsg (the same record format, real
kernel wording) so the test can write kernel-facility records, which userspace cannot
write to the real device; tests/unit/probes/test_kmsg.py covers the real device.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config import AgentSettings, KmsgProbeConfig
from agent.model import ConditionState
from agent.probes.kmsg import KmsgProbe
from agent.probes.kmsg_match import KernelPattern
from agent.runtime import Agent

RULES = ("kernel-oom-kill", "kernel-oom-kill-storm", "kernel-filesystem-readonly")


async def _until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 20.0
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_oom_kills_and_a_read_only_remount_fire_the_default_rules(tmp_path: Path) -> None:
    fifo = tmp_path / "kmsg"
    os.mkfifo(fifo)
    defaults = AgentSettings(state_dir=tmp_path / "unused")
    settings = AgentSettings(
        state_dir=tmp_path / "state",
        api={"listen": "127.0.0.1:0"},
        rules=tuple(rule for rule in defaults.rules if rule.name in RULES),
    )
    patterns = [KernelPattern.from_config(p) for p in KmsgProbeConfig().effective_patterns]
    agent = Agent(settings, probes=[KmsgProbe(patterns=patterns, path=fifo, interval=1)])
    task = asyncio.create_task(agent.run())
    writer = os.open(fifo, os.O_RDWR)

    def state(rule: str) -> ConditionState | None:
        found = [c.state for c in agent.conditions() if c.rule == rule]
        return found[0] if found else None

    def write(*lines: str) -> None:
        os.write(writer, "".join(line + "\n" for line in lines).encode())

    try:
        await _until(lambda: agent.readiness()[0])
        write(
            *(
                f"3,{10 + n},{n},-;Out of memory: Killed process {4000 + n} (worker-{n}) "
                "total-vm:1063332kB, anon-rss:522448kB, file-rss:4096kB, shmem-rss:0kB"
                for n in range(4)
            )
        )
        await _until(lambda: state("kernel-oom-kill") is ConditionState.FIRING)
        assert state("kernel-oom-kill-storm") is not ConditionState.FIRING
        write("3,14,5,-;Out of memory: Killed process 4004 (worker-4) total-vm:1kB, anon-rss:1kB")
        await _until(lambda: state("kernel-oom-kill-storm") is ConditionState.FIRING)
        oom = agent.events(type="io.nodemedic.kernel.oom_kill", since=0, limit=10)
        assert [(e.subject, e.data["pid"]) for e in oom] == [
            (f"worker-{n}", 4000 + n) for n in range(5)
        ]

        write("2,20,9,-;EXT4-fs (sda1): Remounting filesystem read-only")
        await _until(lambda: state("kernel-filesystem-readonly") is ConditionState.FIRING)
        write("6,21,10,-;EXT4-fs (sda1): re-mounted. Opts: errors=remount-ro. Quota mode: none.")
        await _until(lambda: state("kernel-filesystem-readonly") is ConditionState.RESOLVED)
        (readonly,) = agent.events(type="io.nodemedic.kernel.filesystem_readonly", since=0, limit=5)
        assert readonly.subject == "sda1"
    finally:
        os.close(writer)
        agent.request_stop()
        await asyncio.wait_for(task, 10)
