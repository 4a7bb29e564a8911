"""The ``probes.processes`` section: process groups and the errors a bad one gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_settings
from agent.errors import ConfigError


def _load(tmp_path: Path, groups: str) -> ConfigError:
    path = tmp_path / "nodemedic.yaml"
    path.write_text(f"probes:\n  processes:\n    groups:\n{groups}", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return caught.value


def test_groups_parse_with_their_limits(tmp_path: Path) -> None:
    path = tmp_path / "nodemedic.yaml"
    path.write_text(
        "probes:\n  processes:\n    interval: 5s\n    groups:\n"
        "      - {name: web, comm: nginx, user: www-data, min_count: 2, max_rss_bytes: 2GiB}\n"
        "      - {name: db, pidfile: /run/postgresql/main.pid}\n"
        "      - {name: api, unit: api.service, cmdline: 'gunicorn .*app:main'}\n",
        encoding="utf-8",
    )

    groups = load_settings(path).probes.processes.groups

    assert [group.name for group in groups] == ["web", "db", "api"]
    assert (groups[0].min_count, groups[0].max_rss_bytes) == (2, 2 * 1024**3)
    assert (groups[1].min_count, groups[1].max_rss_bytes) == (1, None)  # defaults


def test_no_groups_by_default() -> None:
    assert load_settings(None).probes.processes.groups == ()


@pytest.mark.parametrize(
    ("group", "field", "message"),
    [
        (
            "{name: web, cmdline: '(worker'}",
            "groups[0]",
            "group 'web': cmdline: invalid regular expression '(worker': missing ), "
            "unterminated subpattern at position 0",
        ),
        (
            "{name: web, comm: nginx-worker-process}",
            "groups[0]",
            "group 'web': comm: 'nginx-worker-process' is longer than the kernel's 15-byte "
            "process name, so it would never match; match it with cmdline instead",
        ),
        ("{name: db}", "groups[0]", "group 'db': give at least one of comm, cmdline"),
        (
            "{name: db, pidfile: /run/db.pid, unit: db.service}",
            "groups[0]",
            "group 'db': give pidfile or unit, not both",
        ),
        (
            "{name: db, pidfile: db.pid}",
            "groups[0]",
            "group 'db': pidfile: 'db.pid' must be an absolute path",
        ),
        ("{name: db, unit: postgresql}", "groups[0]", "group 'db': unit: 'postgresql' is not"),
        ("{name: db, unit: ../x.service}", "groups[0]", "group 'db': unit: '../x.service'"),
        ("{name: 'a b', comm: x}", "groups[0].name", "String should match pattern"),
        ("{name: x, comm: x, min_count: -1}", "groups[0].min_count", "greater than or equal"),
        ("{name: x, comm: x, colour: red}", "groups[0].colour", "unknown key 'colour'"),
    ],
)
def test_a_bad_group_is_named_with_the_field_and_the_fix(
    tmp_path: Path, group: str, field: str, message: str
) -> None:
    error = _load(tmp_path, f"      - {group}\n")

    (issue,) = error.issues
    assert issue.path == f"probes.processes.{field}"
    assert message in issue.message


def test_duplicate_group_names_are_refused(tmp_path: Path) -> None:
    error = _load(tmp_path, "      - {name: web, comm: nginx}\n      - {name: web, comm: httpd}\n")

    (issue,) = error.issues
    assert issue.message == "duplicate group name 'web'; group names must be unique"
