"""The ``nodemedic`` command as an operator uses it: validate, check, run and stop."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import DEFAULT_RULES_FILE
from agent.probes.catalog import PROBE_NAMES
from tests.conftest import FAST_PROBES, REPO, AgentProcess, http_get, http_json, run_cli
from tests.unit.test_metrics import promtool_check

BAD_CONFIGS = sorted((REPO / "tests" / "fixtures" / "bad-configs").glob("*.yaml"))
BUNDLED = REPO / "config" / "nodemedic.yaml"


def _expected(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: '"
    return first.removeprefix("# expect: ")


def test_the_bad_config_corpus_is_not_empty() -> None:
    assert len(BAD_CONFIGS) >= 20


@pytest.mark.parametrize("path", BAD_CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_config_exits_78_naming_file_and_field(path: Path, command: str) -> None:
    result = run_cli(command, "--config", str(path))
    assert result.returncode == 78, result.stderr
    assert _expected(path) in result.stderr
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    config = tmp_path / "many.yaml"
    config.write_text(
        "probes:\n  cpu: {interval: soon}\n  memory: {enabled: maybe}\n"
        "rules:\n  - {name: x, metric: nodemedic_nope, op: '>', threshold: 1}\n",
        encoding="utf-8",
    )
    result = run_cli("validate", "--config", str(config))
    assert result.returncode == 78
    assert "3 problems" in result.stderr
    for field in ("probes.cpu.interval", "probes.memory.enabled", "rules[0].metric"):
        assert f"{config}: {field}:" in result.stderr


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    result = run_cli("validate", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 78
    assert f"{tmp_path / 'absent.yaml'}: file not found" in result.stderr


def test_bundled_config_is_valid() -> None:
    result = run_cli("validate", "--config", str(BUNDLED))
    assert result.returncode == 0, result.stderr
    # Counted, not hard-coded: every new probe and default rule would otherwise touch this.
    rules = len(yaml.safe_load(DEFAULT_RULES_FILE.read_text(encoding="utf-8"))["rules"])
    assert f"valid ({rules} rules, {len(PROBE_NAMES)} probes enabled)" in result.stdout


def test_environment_override_applies_and_is_named_when_wrong() -> None:
    ok = run_cli(
        "validate", "--config", str(BUNDLED), env={"NODEMEDIC_PROBES__SENSORS__ENABLED": "false"}
    )
    # The default rule set has no sensor rule, so disabling the probe is valid.
    assert ok.returncode == 0, ok.stderr
    assert f"{len(PROBE_NAMES) - 1} probes enabled" in ok.stdout
    bad = run_cli("validate", "--config", str(BUNDLED), env={"NODEMEDIC_API__LISTEN": "nowhere"})
    assert bad.returncode == 78
    assert "environment NODEMEDIC_API__LISTEN: api.listen:" in bad.stderr


def test_settings_from_the_systemd_credentials_directory(tmp_path: Path) -> None:
    config = tmp_path / "nodemedic.yaml"
    config.write_text("state_dir: ./state\n", encoding="utf-8")
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "api__listen").write_text("127.0.0.1:notaport\n", encoding="utf-8")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    result = run_cli("validate", "--config", str(config), env=env)
    assert result.returncode == 78
    assert f"credential {creds / 'api__listen'}: api.listen: expected HOST:PORT" in result.stderr
    (creds / "api__listen").write_text("127.0.0.1:9999\n", encoding="utf-8")
    assert run_cli("validate", "--config", str(config), env=env).returncode == 0


def test_check_prints_a_table_of_readings_and_rule_states() -> None:
    result = run_cli("check", "--config", str(BUNDLED))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["METRIC", "LABELS", "VALUE", "UNIT"]
    text = result.stdout
    for metric in (
        "nodemedic_memory_used_ratio",
        "nodemedic_memory_available_bytes",
        "nodemedic_load1",
        "nodemedic_cpu_utilisation_ratio",
        "nodemedic_filesystem_used_ratio",
        "nodemedic_fds_used_ratio",
    ):
        assert any(line.startswith(metric + " ") for line in lines), metric
    assert 'mountpoint="/"' in text
    rule_header = next(i for i, line in enumerate(lines) if line.startswith("RULE"))
    rules = {line.split()[0] for line in lines[rule_header + 1 :] if line.strip()}
    assert {"filesystem-almost-full", "memory-almost-exhausted", "probe-failing"} <= rules


def test_check_shows_every_custom_check_not_only_the_first_to_finish(tmp_path: Path) -> None:
    probes: dict[str, Any] = {name: {"enabled": False} for name in PROBE_NAMES}
    probes["custom"] = {
        "checks": [
            {"name": "quick", "command": ["/bin/echo", "OK - quick"]},
            {
                "name": "slow",
                "command": ["/bin/sh", "-c", "sleep 1; echo 'WARNING - slow'; exit 1"],
            },
        ]
    }
    config = tmp_path / "checks.yaml"
    config.write_text(yaml.safe_dump({"probes": probes}), encoding="utf-8")

    result = run_cli("check", "--config", str(config))

    assert result.returncode == 0, result.stderr
    status = {
        line.split()[1]: line.split()[2]
        for line in result.stdout.splitlines()
        if line.startswith("nodemedic_custom_check_status ")
    }
    assert status == {'check="quick"': "0", 'check="slow"': "1"}, result.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_run_serves_then_stops_cleanly_on_signal(
    agent_factory: Callable[..., AgentProcess], sig: signal.Signals
) -> None:
    agent = agent_factory({"probes": FAST_PROBES})
    agent.start()
    agent.wait_ready()
    conditions = http_json(agent.url + "/v1/conditions")
    assert conditions["conditions"], "the default rules watch at least one series"
    code, took = agent.stop(sig)
    assert code == 0, agent.log()
    assert took < 5.0
    log = agent.log()
    assert f"received {sig.name}; stopping" in log
    assert "stopped" in log
    db = sqlite3.connect(agent.workdir / "state" / "nodemedic.db")
    types = [row[0] for row in db.execute("SELECT type FROM events ORDER BY sequence")]
    db.close()
    assert types[0] == "io.nodemedic.agent.started"
    assert types[-1] == "io.nodemedic.agent.stopping"


def test_events_keep_their_sequence_across_restarts(
    agent_factory: Callable[..., AgentProcess],
) -> None:
    agent = agent_factory({"probes": FAST_PROBES})
    sequences: list[int] = []
    for _ in range(2):
        agent.start()
        agent.wait_ready()
        assert agent.stop()[0] == 0
    agent.start()
    agent.wait_ready()
    body: dict[str, Any] = http_json(agent.url + "/v1/events?limit=1000")
    sequences = [event["sequence"] for event in body["events"]]
    assert sequences == list(range(1, len(sequences) + 1))
    started = [e for e in body["events"] if e["type"] == "io.nodemedic.agent.started"]
    assert len(started) == 3
    assert all(e["source"] == "nodemedic://" + e["subject"] for e in started)


@pytest.mark.promtool
def test_a_running_agents_metrics_pass_promtool(
    agent_factory: Callable[..., AgentProcess],
) -> None:
    agent = agent_factory({"probes": FAST_PROBES})
    agent.start()
    agent.wait_ready()
    status, text = http_get(agent.url + "/metrics")
    assert status == 200
    for name in ("nodemedic_filesystem_used_ratio", "nodemedic_probe_up", "nodemedic_build_info"):
        assert f"\n{name}" in text
    code, printed = promtool_check(text)
    assert printed == ""
    assert code == 0
    assert agent.stop()[0] == 0


def test_a_corrupt_database_is_moved_aside_not_a_crash_loop(
    agent_factory: Callable[..., AgentProcess],
) -> None:
    agent = agent_factory({"probes": FAST_PROBES})
    state = agent.workdir / "state"
    state.mkdir()
    (state / "nodemedic.db").write_bytes(b"this is not a database\n" * 200)
    agent.start()
    agent.wait_ready()
    types = [e["type"] for e in http_json(agent.url + "/v1/events?limit=10")["events"]]
    assert types[:2] == ["io.nodemedic.store.reset", "io.nodemedic.agent.started"]
    moved = list(state.glob("nodemedic.db.corrupt-*"))
    assert len(moved) == 1
    assert moved[0].read_bytes().startswith(b"this is not a database")
    assert "moved it to" in agent.log()
    assert agent.stop()[0] == 0


def test_a_rule_removed_from_the_config_is_retired_with_a_resolved_event(
    agent_factory: Callable[..., AgentProcess],
) -> None:
    always = {
        "name": "always-firing",
        "metric": "nodemedic_cpu_cores",
        "op": ">",
        "threshold": 0,
        "severity": "info",
    }
    agent = agent_factory({"probes": FAST_PROBES, "rules": [always]})
    agent.start()
    agent.wait_ready()
    firing = http_json(agent.url + "/v1/conditions?state=firing")["conditions"]
    assert [c["name"] for c in firing] == ["always-firing"]
    assert agent.stop()[0] == 0

    config = yaml.safe_load(agent.config_path.read_text(encoding="utf-8"))
    config["rules"] = []
    agent.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    agent.start()
    agent.wait_ready()
    events = http_json(agent.url + "/v1/events?type=io.nodemedic.condition.*&limit=100")["events"]
    assert [(e["subject"], e["data"]["state"]) for e in events] == [
        ("always-firing", "firing"),
        ("always-firing", "resolved"),
    ]
    assert events[1]["data"]["reason"] == "rule removed"
    assert http_json(agent.url + "/v1/conditions")["conditions"] == []
    assert agent.stop()[0] == 0


def test_a_second_signal_exits_at_once(agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory({"probes": FAST_PROBES})
    agent.start()
    agent.wait_ready()
    assert agent.proc is not None
    # Two different signals: the kernel merges a second SIGTERM into one still pending,
    # and which of two pending signals is handled first is up to the scheduler.
    agent.proc.send_signal(signal.SIGTERM)
    agent.proc.send_signal(signal.SIGINT)
    code = agent.proc.wait(timeout=5)
    log = agent.log()
    first, second = (
        (signal.SIGINT, signal.SIGTERM)
        if code == 128 + signal.SIGTERM
        else (signal.SIGTERM, signal.SIGINT)
    )
    assert code == 128 + second, log
    assert f"received {first.name}; stopping" in log
    assert f"received {second.name} again; exiting now" in log
