"""``nodemedic why RUN_ID`` and the playbook check of ``validate`` and ``run``."""

from __future__ import annotations

__all__ = ["check_playbooks", "why"]

import sys
from pathlib import Path
from typing import Any

from agent.config import AgentSettings
from agent.errors import AgentError, ConfigError, StoreError

EX_CONFIG = 78
EX_NOINPUT = 66
"""sysexits.h EX_NOINPUT: the run or the state database does not exist."""


def check_playbooks(settings: AgentSettings) -> str | None:
    """Load every playbook; print the problems and return None when any is invalid.

    Returns:
        A summary such as ``3 playbooks (1 enforce), 2 dormant``.
    """
    from remediations.service import load_library

    try:
        _, library = load_library(settings)
    except ConfigError as err:
        count = len(err.issues)
        print(
            f"nodemedic: invalid playbooks ({count} problem{'s' * (count != 1)}):", file=sys.stderr
        )
        for issue in err.issues:
            print(f"  {issue}", file=sys.stderr)
        return None
    except AgentError as err:
        print(f"nodemedic: remediation: {err}", file=sys.stderr)
        return None
    enforcing = sum(1 for p in library.playbooks.values() if p.mode.value == "enforce")
    return (
        f"{len(library.playbooks)} playbooks ({enforcing} enforce), {len(library.dormant)} dormant"
    )


def why(settings: AgentSettings, run_id: str) -> int:
    """Print a run's decision record from the state database."""
    from agent.store import Store
    from remediations.journal import Journal

    path = Path(settings.state_dir) / "nodemedic.db"
    if not path.exists():
        print(f"nodemedic: no state database at {path}", file=sys.stderr)
        return EX_NOINPUT
    try:
        with Store.open(path) as store:
            record = Journal(store).describe(run_id.strip().upper())
    except StoreError as err:
        print(f"nodemedic: {err}", file=sys.stderr)
        return EX_NOINPUT
    if record is None:
        print(f"nodemedic: no run {run_id} in {path}", file=sys.stderr)
        return EX_NOINPUT
    _print_record(record)
    return 0


def _print_record(record: dict[str, Any]) -> None:
    print(f"run {record['id']}: {record['playbook']} on {record['target']}")
    print(f"  mode {record['mode']}, source {record['source']}, trigger {record['trigger']}")
    print(
        f"  requested {record['requested']}, started {record['started'] or '-'}, "
        f"finished {record['finished'] or '-'}"
    )
    print(f"  state {record['state']}" + (f": {record['reason']}" if record["reason"] else ""))
    print("decisions:")
    for d in record["decisions"]:
        verdict = "pass" if d["allowed"] else "STOP"
        print(f"  {d['time']} {d['phase']:<7} {d['gate']:<13} {verdict}  {d['reason']}")
    if record["steps"]:
        print("steps:")
    for s in record["steps"]:
        print(
            f"  {s['started']} {s['phase']}[{s['step']}] attempt {s['attempt']} {s['action']}: "
            f"{s['state']}" + (f": {s['summary']}" if s["summary"] else "")
        )
