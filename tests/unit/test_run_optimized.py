"""``nodemedic run`` as the shipped unit starts it: byte code without docstrings or asserts.

The unit (and ``make run``) sets ``PYTHONOPTIMIZE=2``, as ``python -OO`` would: 2 MiB less
resident memory for the agent's life (issue 9). Nothing on the run path may depend on a
docstring or an ``assert``, so a run under the unit's environment must serve the same
probes, in the same state, as a run without it, and stop as cleanly.
"""

from __future__ import annotations

import re
from typing import Any

from agent.config import load_settings
from bench.agent_overhead import unit_environment
from tests.conftest import FAST_PROBES, http_get, until

_PROBE_UP = re.compile(r'^nodemedic_probe_up\{probe="([^"]+)"\} (\S+)$', re.MULTILINE)


def _probes_up(agent: Any, env: dict[str, str]) -> dict[str, float]:
    """Start the agent with ``env``, wait until every enabled probe reported, stop it."""
    agent.start(env={"NOTIFY_SOCKET": "", "WATCHDOG_USEC": "", **env})
    agent.wait_ready(timeout=60.0)
    enabled = set(load_settings(agent.config_path).probes.enabled())

    def reported() -> dict[str, float] | None:
        _, text = http_get(agent.url + "/metrics", timeout=10.0)
        found = {name: float(value) for name, value in _PROBE_UP.findall(text)}
        return found if enabled <= set(found) else None

    found: dict[str, float] = until(reported, "every enabled probe's probe_up", agent, 60.0)
    code, _ = agent.stop(timeout=30.0)
    assert code == 0, agent.log()
    assert "Traceback" not in agent.log()
    return {name: value for name, value in found.items() if name in enabled}


def test_the_unit_runs_the_agent_with_docstrings_and_asserts_dropped() -> None:
    assert unit_environment().get("PYTHONOPTIMIZE") == "2"


def test_a_run_under_the_units_environment_serves_the_same_probes_in_the_same_state(
    agent_factory: Any,
) -> None:
    settings = {"log": {"level": "info"}, "probes": FAST_PROBES}
    plain = _probes_up(agent_factory(settings, "plain"), {"PYTHONOPTIMIZE": ""})
    optimized = _probes_up(agent_factory(settings, "optimized"), unit_environment())

    assert optimized == plain
    assert set(plain.values()) <= {0.0, 1.0}
