"""The command-cost bench's machinery at a small scale: real agents and Mosquitto.

Two simulated nodes (real :class:`agent.runtime.Agent` objects in one child process)
answer a few signed fleet commands; every command must come back accepted from both
with its event, and the CPU they used must have been read. Only outcomes are asserted,
never timings.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from bench.command_cost import measure

pytestmark = [pytest.mark.mosquitto]


def test_every_command_is_answered_and_its_cpu_read() -> None:
    # measure() raises when a node refuses a command, times out when one does not answer.
    figures = asyncio.run(measure(nodes=2, commands=3, profile=None))

    assert figures["nodes"] == 2
    assert figures["commands"] == 3
    assert figures["median_ms"] > 0
    assert math.isfinite(figures["mean_ms"])
