"""A real agent for the status page tests, with a condition the test switches on and off.

The agent runs the memory probe (for a chart) and the custom-check probe, every 200 ms,
on a plugin script that exits with the Nagios status written in a file the test controls
(0 OK, 2 CRITICAL); the rule ``switch-critical`` fires while it is 2. Remediation is on
with one playbook, ``switch-observe``, which the condition triggers in observe mode (a run
with a decision record, nothing done), and two API tokens: ``OPS`` may pause, ``VIEWER``
may not.
"""

from __future__ import annotations

__all__ = ["NODE", "OPS", "VIEWER", "StatusAgent", "status_agent"]

import json
import secrets
from pathlib import Path
from typing import Any

from agent.config_remote import hash_token
from agent.probes.catalog import PROBE_NAMES
from tests.conftest import REPO, AgentProcess

NODE = "web-7"
OPS = secrets.token_hex(32)
VIEWER = secrets.token_hex(32)


class StatusAgent(AgentProcess):
    """An agent whose ``switch-critical`` condition follows :meth:`switch`."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.state_file = workdir / "switch"
        self.state_file.write_text("0\n", encoding="utf-8")
        script = workdir / "check_switch"
        script.write_text(
            f'#!/bin/sh\ncode=$(cat "{self.state_file}")\necho "switch is $code"\nexit "$code"\n',
            encoding="utf-8",
        )
        books = workdir / "playbooks"
        books.mkdir(exist_ok=True)
        (books / "switch-observe.yaml").write_text(
            json.dumps(
                {
                    "name": "switch-observe",
                    "mode": "observe",
                    "trigger": {"conditions": ["switch-critical"]},
                    "target": "{labels.check}",
                    "disruptive": False,
                    "steps": [
                        {
                            "action": "test.record",
                            "params": {"log": str(workdir / "never.log"), "note": "observed"},
                        }
                    ],
                }
            ),
            encoding="utf-8",
        )
        settings: dict[str, Any] = {
            "node": {"name": NODE},
            "log": {"level": "info"},
            "probes": {name: {"enabled": False} for name in PROBE_NAMES if name != "custom"}
            | {
                "memory": {"interval": "1s"},  # for the page's memory chart
                "custom": {
                    "interval": "200ms",
                    # A run cut short by a busy machine would be UNKNOWN and clear the
                    # condition: the plugin gets far longer than it needs.
                    "checks": [
                        {"name": "switch", "command": ["/bin/sh", str(script)], "timeout": "10s"}
                    ],
                },
            },
            "rules": [
                {
                    "name": "switch-critical",
                    "metric": "nodemedic_custom_check_status",
                    "op": "==",
                    "threshold": 2,
                    "severity": "critical",
                    "description": "the test's switch is on",
                }
            ],
            "remediation": {
                "playbooks_dir": str(books),
                "builtin_playbooks": False,
                "action_modules": ["tests.remediation_actions"],
                "pause_file": str(workdir / "pause"),
            },
            "remote": {
                "api_tokens": [
                    {"name": "ops", "sha256": hash_token(OPS), "pause": True},
                    {"name": "viewer", "sha256": hash_token(VIEWER), "playbooks": ["none"]},
                ]
            },
        }
        super().__init__(workdir, settings)

    def switch(self, *, on: bool) -> None:
        """Make the check report CRITICAL (on) or OK (off) from its next run."""
        self.state_file.write_text("2\n" if on else "0\n", encoding="utf-8")


def status_agent(tmp_path: Path) -> StatusAgent:
    """A started, ready :class:`StatusAgent` in ``tmp_path / "agent"``; kill it when done."""
    agent = StatusAgent(tmp_path / "agent")
    agent.start(env={"PYTHONPATH": str(REPO)})  # for tests.remediation_actions
    try:
        agent.wait_ready(timeout=60.0)
    except BaseException:
        agent.kill()
        raise
    return agent
