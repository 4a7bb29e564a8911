"""Configuration loading: durations, precedence, defaults and error reporting."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from agent.config import load_settings, parse_duration, split_host_port
from agent.errors import ConfigError
from agent.logs import under_journald
from agent.notify import watchdog_interval


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("10s", 10), ("5m", 300), ("1h30m", 5400), ("2d", 172800), ("1.5s", 1.5)],
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5", "5 m", "m5", "5x", "1h 30m", "-5s", "5s5"])
def test_bad_durations_name_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 500ms, 10s, 5m"):
        parse_duration(text)


def test_listen_addresses() -> None:
    assert split_host_port("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert split_host_port("[::1]:0") == ("::1", 0)
    for bad in ("9464", "::1:9464", "host:99999", "host:"):
        with pytest.raises(ValueError, match=r"HOST:PORT|out of range"):
            split_host_port(bad)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nodemedic.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_environment_overrides_the_file_and_the_file_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, "probes:\n  cpu: {interval: 5s, enabled: true}\n")
    settings = load_settings(path, environ={})
    assert settings.probes.cpu.interval == timedelta(seconds=5)
    assert settings.probes.memory.interval == timedelta(seconds=10)  # default
    monkeypatch.setenv("NODEMEDIC_PROBES__CPU__INTERVAL", "750ms")
    settings = load_settings(path, environ=dict(os.environ))
    assert settings.probes.cpu.interval == timedelta(milliseconds=750)
    assert settings.probes.cpu.enabled  # the rest of the file's entry survives the merge


def test_default_rules_apply_unless_the_file_lists_rules(tmp_path: Path) -> None:
    defaults = load_settings(_write(tmp_path, "state_dir: /tmp/x\n"), environ={})
    assert {r.name for r in defaults.rules} >= {
        "filesystem-almost-full",
        "root-filesystem-readonly",
        "memory-pressure",
        "clock-unsynchronised",
        "probe-failing",
    }
    none = load_settings(_write(tmp_path, "rules: []\n"), environ={})
    assert none.rules == ()


def test_disabling_a_probe_drops_its_default_rules_but_not_listed_ones(tmp_path: Path) -> None:
    text = "probes: {sensors: {enabled: false}, clock: {enabled: false}}\n"
    settings = load_settings(_write(tmp_path, text), environ={})
    names = {r.name for r in settings.rules}
    assert "filesystem-almost-full" in names
    assert "clock-unsynchronised" not in names

    listed = (
        text
        + "rules: [{name: hot, metric: nodemedic_temperature_celsius, op: '>', threshold: 90}]\n"
    )
    with pytest.raises(ConfigError, match="disabled probe 'sensors'"):
        load_settings(_write(tmp_path, listed), environ={})


def test_rule_for_is_read_from_its_yaml_key(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "rules:\n  - {name: r, metric: nodemedic_load1, op: '>', threshold: 4, for: 90s}\n",
    )
    (rule,) = load_settings(path, environ={}).rules
    assert rule.for_ == timedelta(seconds=90)
    assert rule.clear is None


def test_a_config_error_lists_every_issue_with_its_source(tmp_path: Path) -> None:
    path = _write(tmp_path, "api: {listen: nowhere}\nlog: {level: loud}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    paths = [issue.path for issue in caught.value.issues]
    assert paths == ["api.listen", "log.level"]
    assert all(issue.source == str(path) for issue in caught.value.issues)


def test_watchdog_interval_follows_sd_watchdog_enabled() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    own = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(own) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_journal_is_chosen_only_when_stderr_is_the_journal_stream() -> None:
    assert not under_journald({})
    assert not under_journald({"JOURNAL_STREAM": "1:2"})
    stat = os.fstat(2)
    assert under_journald({"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"})
