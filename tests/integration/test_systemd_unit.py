"""The files that install nodemedic as a service, checked by systemd's own tools.

``systemd-analyze``, ``systemd-sysusers`` and ``systemd-tmpfiles`` work on files and a
``--root`` directory without a booted systemd, so these run on any Debian machine with the
``systemd`` package (Debian 12: systemd 252).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.cli import EX_CONFIG
from tests.conftest import NODEMEDIC, REPO

UNIT = REPO / "systemd" / "nodemedic.service"
SYSUSERS = REPO / "systemd" / "nodemedic.sysusers"
TMPFILES = REPO / "systemd" / "nodemedic.tmpfiles"
POLKIT_RULE = REPO / "packaging" / "polkit" / "50-nodemedic.rules"
INSTALLED_BINARY = "/opt/nodemedic/bin/nodemedic"
MAX_EXPOSURE = 3.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} not found: install Debian's systemd package"
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def _directives(name: str) -> list[str]:
    """Every active (not commented out) value of ``name`` in the unit, in order."""
    prefix = f"{name}="
    return [
        line.removeprefix(prefix)
        for line in UNIT.read_text(encoding="utf-8").splitlines()
        if line.startswith(prefix)
    ]


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart's binary exists; /opt/nodemedic is where the Debian
    # package installs it, so check a copy that starts this checkout's console script.
    text = UNIT.read_text(encoding="utf-8")
    assert text.count(f"ExecStart={INSTALLED_BINARY} ") == 1
    copy = tmp_path / "nodemedic.service"
    copy.write_text(text.replace(INSTALLED_BINARY, str(NODEMEDIC)), encoding="utf-8")

    result = _run(_tool("systemd-analyze"), "verify", str(copy))

    # verify exits 0 on unknown keys and unparsable values (it only warns), so any output
    # is a failure too.
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_unit_exposure_is_at_most_3() -> None:
    # systemd 252 takes --threshold as a whole number on a 0-100 scale: 30 is "3.0"
    # ("--threshold=3.0" fails to parse).
    threshold = round(MAX_EXPOSURE * 10)
    result = _run(
        _tool("systemd-analyze"),
        "security",
        "--offline=yes",
        f"--threshold={threshold}",
        "--no-pager",
        str(UNIT),
    )

    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"Overall exposure level for nodemedic\.service: (\d+\.\d)", result.stdout)
    assert match is not None, result.stdout
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_a_bad_config_does_not_restart_the_unit_in_a_loop() -> None:
    assert _directives("Restart") == ["on-failure"]
    assert str(EX_CONFIG) in " ".join(_directives("RestartPreventExitStatus")).split()


def test_a_host_without_the_mqtt_password_file_can_start_the_unit() -> None:
    # LoadCredential= of a missing file fails the unit: it is only a commented example.
    assert _directives("LoadCredential") == []
    assert "#LoadCredential=mqtt__password:" in UNIT.read_text(encoding="utf-8")


def test_the_agent_keeps_only_the_kill_and_syslog_capabilities() -> None:
    assert _directives("CapabilityBoundingSet") == ["CAP_KILL CAP_SYSLOG"]
    assert _directives("AmbientCapabilities") == ["CAP_KILL CAP_SYSLOG"]
    assert _directives("User") == ["nodemedic"]


def _syscall_group(group: str) -> set[str]:
    """The system calls in a ``systemd-analyze syscall-filter`` group, nested ones expanded."""
    result = _run(_tool("systemd-analyze"), "syscall-filter", "--no-pager", group)
    assert result.returncode == 0, result.stderr
    calls: set[str] = set()
    for line in result.stdout.splitlines()[1:]:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        calls |= _syscall_group(entry) if entry.startswith("@") else {entry}
    return calls


def _allowed_syscalls() -> set[str]:
    # systemd's semantics: the first line (without ~) starts an allow list; later lines
    # add to it, or remove from it with ~, in order.
    allowed: set[str] = set()
    for value in _directives("SystemCallFilter"):
        deny = value.startswith("~")
        calls: set[str] = set()
        for item in value.removeprefix("~").split():
            calls |= _syscall_group(item) if item.startswith("@") else {item}
        allowed = allowed - calls if deny else allowed | calls
    return allowed


def test_the_syscall_filter_lets_the_clock_probe_read_the_clock() -> None:
    allowed = _allowed_syscalls()

    # glibc >= 2.31 implements adjtimex(3) with the clock_adjtime system call.
    assert {"adjtimex", "clock_adjtime"} <= allowed
    # Reading must not bring setting the clock along.
    assert not {"clock_settime", "settimeofday"} & allowed
    assert not _syscall_group("@resources") & allowed
    assert {"kill", "pidfd_send_signal", "openat", "connect"} <= allowed


def test_sysusers_creates_a_system_user_that_cannot_log_in(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()

    result = _run(_tool("systemd-sysusers"), f"--root={tmp_path}", str(SYSUSERS))

    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text(encoding="utf-8").splitlines()
    match = re.fullmatch(
        r"nodemedic:x:(\d+):(\d+):[^:]*:/var/lib/nodemedic:/usr/sbin/nologin", passwd[0]
    )
    assert match is not None, passwd
    assert len(passwd) == 1
    uid, gid = int(match.group(1)), int(match.group(2))
    assert uid < 1000, "a system user (SYS_UID_MAX is 999 on Debian)"
    group = (tmp_path / "etc" / "group").read_text(encoding="utf-8").splitlines()
    assert group == [f"nodemedic:x:{gid}:"]


def test_tmpfiles_creates_a_root_only_credentials_directory(tmp_path: Path) -> None:
    result = _run(_tool("systemd-tmpfiles"), f"--root={tmp_path}", "--create", str(TMPFILES))

    assert result.returncode == 0, result.stderr
    credentials = tmp_path / "etc" / "nodemedic" / "credentials"
    assert credentials.is_dir()
    assert credentials.stat().st_mode & 0o777 == 0o700


def _polkit_code() -> str:
    """The rule's JavaScript with comments and string contents blanked out."""
    text = POLKIT_RULE.read_text(encoding="utf-8")
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)
    return re.sub(r'"(?:[^"\\\n]|\\.)*"', '""', text)


def _managed_units() -> list[str]:
    match = re.search(
        r"^var NODEMEDIC_MANAGED_UNITS = \[(.*?)\];",
        POLKIT_RULE.read_text(encoding="utf-8"),
        flags=re.DOTALL | re.MULTILINE,
    )
    assert match is not None, "the unit list must be the array NODEMEDIC_MANAGED_UNITS at the top"
    return re.findall(r'"([^"]+)"', match.group(1))


def test_polkit_rule_brackets_balance() -> None:
    # A pure-Python check: Debian 12 machines need not have a JavaScript engine.
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in _polkit_code():
        if char in "([{":
            stack.append(char)
        elif char in pairs:
            assert stack, f"unbalanced {char!r} in {POLKIT_RULE.name}"
            assert stack.pop() == pairs[char], f"mismatched {char!r} in {POLKIT_RULE.name}"
    assert stack == [], f"unclosed {stack} in {POLKIT_RULE.name}"


@pytest.mark.parametrize(
    "needle",
    [
        'action.id !== "org.freedesktop.systemd1.manage-units"',
        'subject.user !== "nodemedic"',
        'action.lookup("unit")',
        'action.lookup("verb")',
        "polkit.Result.YES",
    ],
)
def test_polkit_rule_grants_only_unit_management_to_nodemedic(needle: str) -> None:
    assert needle in POLKIT_RULE.read_text(encoding="utf-8")


def test_polkit_rule_lists_units_but_never_the_agent_or_sshd() -> None:
    units = _managed_units()

    assert units
    assert all(re.fullmatch(r"[\w@.:-]+\.service", unit) for unit in units), units
    assert not {"nodemedic.service", "ssh.service", "sshd.service"} & set(units)
