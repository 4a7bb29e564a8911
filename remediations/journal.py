"""The durable run journal in the agent's SQLite store.

Every run is a row whose state moves requested -> gated -> running (step i) ->
verifying -> succeeded | failed, or ends skipped or interrupted. Every gate decision
and every step attempt is appended to its own table before the engine acts on it, so
after a crash the journal says exactly which step was in flight, and the gate state
(cooldowns, rate windows, breaker counts) is derived from these rows and survives
restarts. Each method is one transaction.
"""

from __future__ import annotations

__all__ = ["Journal", "StepAttempt"]

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.ids import EventIds
from agent.store import Store
from agent.store_rows import dumps, json_safe
from remediations.breaker import RunRecord
from remediations.gates import Decision
from remediations.model import RunState

_RUN_COLUMNS = (
    "id, playbook, target, state, source, requested, started, finished, would_run, disruptive"
)
_SUMMARY_COLUMNS = (
    "id, playbook, target, source, mode, disruptive, state, step, would_run, gate, reason,"
    " trigger, requested, started, finished"
)
_HISTORY = 200
"""Runs of one playbook the gates look back over (more than any limit needs)."""


@dataclass(frozen=True, slots=True)
class StepAttempt:
    """One attempt of one step as the journal holds it.

    Attributes:
        phase: ``steps`` or ``on_failure``.
        step: the step's index in its phase.
        attempt: 0 for the first try.
        action: the action's name.
        state: ``started``, ``succeeded`` or ``failed``.
    """

    phase: str
    step: int
    attempt: int
    action: str
    state: str


class Journal:
    """Runs, decisions and step attempts in ``store``; use from the event loop's thread.

    The switches (:meth:`get`) and the runs' history (:meth:`history`) are read from
    memory after their first read, and forgotten by every write to them: the gates and
    each status reply read them for every playbook, and the agent is the journal's
    only writer (other processes only read it).
    """

    def __init__(self, store: Store, *, max_runs: int = 10_000) -> None:
        self._store = store
        self._max_runs = max_runs
        self._switches: dict[str, str | None] = {}  # key -> its JSON, None when unset
        self._histories: dict[tuple[str, str | None], tuple[RunRecord, ...]] = {}
        self._ids = EventIds()
        rows = store.query("read the journal of", "SELECT MAX(id) FROM runs")
        if rows and rows[0][0]:
            self._ids.seed(rows[0][0])

    # writing

    def create(
        self,
        *,
        playbook: str,
        target: str,
        source: str,
        mode: str,
        disruptive: bool,
        trigger: Mapping[str, Any],
        now: float,
    ) -> RunRecord:
        """Record a new run in state ``requested``; trims the oldest finished runs."""
        run_id = self._ids.next(int(now * 1000))
        self._histories.clear()
        with self._store.transaction("record a run in") as conn:
            conn.execute(
                "INSERT INTO runs (id, playbook, target, source, mode, disruptive, state, trigger,"
                " requested, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    playbook,
                    target,
                    source,
                    mode,
                    int(disruptive),
                    RunState.REQUESTED.value,
                    dumps(json_safe(dict(trigger))),
                    now,
                    now,
                ),
            )
            conn.execute(
                "DELETE FROM runs WHERE id IN (SELECT id FROM runs WHERE state IN"
                " ('succeeded', 'failed', 'skipped', 'interrupted')"
                " ORDER BY id DESC LIMIT -1 OFFSET ?)",
                (self._max_runs,),
            )
        return RunRecord(
            run_id, playbook, target, RunState.REQUESTED, source, now, disruptive=disruptive
        )

    def decide(self, run_id: str, phase: str, decisions: Sequence[Decision], now: float) -> None:
        """Append the gates' decisions of one evaluation (``trigger`` or ``execute``)."""
        with self._store.transaction("record gate decisions in") as conn:
            (seq,) = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM run_decisions WHERE run_id = ?", (run_id,)
            ).fetchone()
            conn.executemany(
                "INSERT INTO run_decisions (run_id, seq, time, phase, gate, allowed, reason)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (run_id, seq + i, now, phase, d.gate, int(d.allowed), d.reason)
                    for i, d in enumerate(decisions, start=1)
                ],
            )

    def transition(
        self,
        run_id: str,
        state: RunState,
        now: float,
        *,
        step: int | None = None,
        gate: str | None = None,
        reason: str | None = None,
        would_run: bool = False,
    ) -> None:
        """Move a run to ``state``; sets ``started`` on the first step, ``finished`` at the end."""
        sets = ["state = ?", "updated = ?"]
        values: list[Any] = [state.value, now]
        if step is not None:
            sets.append("step = ?")
            values.append(step)
        if state is RunState.RUNNING:
            sets.append("started = COALESCE(started, ?)")
            values.append(now)
        if state.final:
            sets.append("finished = ?")
            values.append(now)
        if gate is not None:
            sets.append("gate = ?")
            values.append(gate)
        if reason is not None:
            sets.append("reason = ?")
            values.append(reason)
        if would_run:
            sets.append("would_run = 1")
        self._histories.clear()
        with self._store.transaction("update a run in") as conn:
            conn.execute(f"UPDATE runs SET {', '.join(sets)} WHERE id = ?", (*values, run_id))  # noqa: S608  (constant fragments; values are bound)

    def step_started(
        self, run_id: str, *, phase: str, step: int, attempt: int, action: str, now: float
    ) -> int:
        """Record that a step attempt is about to touch the host; returns its row's seq."""
        with self._store.transaction("record a step in") as conn:
            (seq,) = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM run_steps WHERE run_id = ?", (run_id,)
            ).fetchone()
            conn.execute(
                "INSERT INTO run_steps (run_id, seq, phase, step, attempt, action, state, started)"
                " VALUES (?, ?, ?, ?, ?, ?, 'started', ?)",
                (run_id, seq, phase, step, attempt, action, now),
            )
        return int(seq)

    def step_finished(
        self,
        run_id: str,
        seq: int,
        *,
        ok: bool,
        summary: str,
        details: Mapping[str, Any],
        now: float,
    ) -> None:
        """Record a step attempt's result."""
        with self._store.transaction("record a step in") as conn:
            conn.execute(
                "UPDATE run_steps SET state = ?, finished = ?, summary = ?, details = ?"
                " WHERE run_id = ? AND seq = ?",
                (
                    "succeeded" if ok else "failed",
                    now,
                    summary,
                    dumps(json_safe(dict(details))),
                    run_id,
                    seq,
                ),
            )

    def put(self, key: str, value: Any) -> None:
        """Set a switch or marker (``pause``, ``breaker_reset:<playbook>``...)."""
        self._switches.pop(key, None)  # first: a failed write leaves nothing stale
        with self._store.transaction("save remediation state in") as conn:
            if value is None:
                conn.execute("DELETE FROM remediation_state WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO remediation_state (key, value) VALUES (?, ?)",
                    (key, dumps(value)),
                )

    # reading

    def get(self, key: str) -> Any:
        """A switch or marker, or None."""
        if key in self._switches:
            text = self._switches[key]
        else:
            rows = self._store.query(
                "read remediation state from",
                "SELECT value FROM remediation_state WHERE key = ?",
                (key,),
            )
            text = self._switches[key] = str(rows[0][0]) if rows else None
        return None if text is None else json.loads(text)  # a fresh value for every caller

    def history(self, playbook: str, target: str | None = None) -> list[RunRecord]:
        """The newest runs of ``playbook`` (on ``target`` if given), newest first."""
        cached = self._histories.get((playbook, target))
        if cached is not None:
            return list(cached)
        sql = f"SELECT {_RUN_COLUMNS} FROM runs WHERE playbook = ?"  # noqa: S608  (constant columns)
        params: tuple[Any, ...] = (playbook,)
        if target is not None:
            sql += " AND target = ?"
            params += (target,)
        sql += " ORDER BY id DESC LIMIT ?"
        records = _records(self._store.query("read runs from", sql, (*params, _HISTORY)))
        self._histories[(playbook, target)] = tuple(records)
        return records

    def in_states(self, states: Iterable[RunState]) -> list[RunRecord]:
        """Every run in one of ``states``, oldest first."""
        wanted = [s.value for s in states]
        marks = ", ".join("?" * len(wanted))
        sql = f"SELECT {_RUN_COLUMNS} FROM runs WHERE state IN ({marks}) ORDER BY id"  # noqa: S608  (placeholders only)
        return _records(self._store.query("read runs from", sql, tuple(wanted)))

    def attempts(self, run_id: str) -> list[StepAttempt]:
        """A run's step attempts in order."""
        rows = self._store.query(
            "read steps from",
            "SELECT phase, step, attempt, action, state FROM run_steps WHERE run_id = ?"
            " ORDER BY seq",
            (run_id,),
        )
        return [StepAttempt(r[0], int(r[1]), int(r[2]), r[3], r[4]) for r in rows]

    def trigger_of(self, run_id: str) -> dict[str, Any]:
        """The trigger a run was created with (rule and labels, or the remote source)."""
        rows = self._store.query(
            "read a run from", "SELECT trigger FROM runs WHERE id = ?", (run_id,)
        )
        return dict(json.loads(rows[0][0])) if rows else {}

    def outcomes(self) -> dict[tuple[str, str], int]:
        """Runs by (playbook, state), for metrics."""
        rows = self._store.query(
            "count runs in", "SELECT playbook, state, COUNT(*) FROM runs GROUP BY playbook, state"
        )
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def would_runs(self) -> dict[str, int]:
        """Observe-mode would-runs by playbook, for metrics."""
        rows = self._store.query(
            "count runs in",
            "SELECT playbook, COUNT(*) FROM runs WHERE would_run = 1 GROUP BY playbook",
        )
        return {r[0]: int(r[1]) for r in rows}

    def describe(self, run_id: str) -> dict[str, Any] | None:
        """The whole decision record of a run (for ``nodemedic why`` and the API)."""
        sql = f"SELECT {_SUMMARY_COLUMNS} FROM runs WHERE id = ?"  # noqa: S608  (constant columns)
        rows = self._store.query("read a run from", sql, (run_id,))
        if not rows:
            return None
        record = _summary(rows[0])
        decisions = self._store.query(
            "read decisions from",
            "SELECT time, phase, gate, allowed, reason FROM run_decisions WHERE run_id = ?"
            " ORDER BY seq",
            (run_id,),
        )
        record["decisions"] = [
            {"time": _iso(t), "phase": p, "gate": g, "allowed": bool(a), "reason": r}
            for t, p, g, a, r in decisions
        ]
        steps = self._store.query(
            "read steps from",
            "SELECT phase, step, attempt, action, state, started, finished, summary, details"
            " FROM run_steps WHERE run_id = ? ORDER BY seq",
            (run_id,),
        )
        record["steps"] = [
            {
                "phase": ph,
                "step": st,
                "attempt": at,
                "action": ac,
                "state": state,
                "started": _iso(s0),
                "finished": _iso(s1),
                "summary": summary,
                "details": json.loads(details),
            }
            for ph, st, at, ac, state, s0, s1, summary, details in steps
        ]
        return record

    def recent(self, *, limit: int = 100, playbook: str | None = None) -> list[dict[str, Any]]:
        """The newest runs, newest first, as summaries."""
        where, params = ("WHERE playbook = ?", (playbook,)) if playbook else ("", ())
        sql = f"SELECT {_SUMMARY_COLUMNS} FROM runs {where} ORDER BY id DESC LIMIT ?"  # noqa: S608  (constant fragments; values are bound)
        rows = self._store.query("read runs from", sql, (*params, limit))
        return [_summary(row) for row in rows]


def _records(rows: Iterable[Any]) -> list[RunRecord]:
    return [
        RunRecord(
            run_id=r[0],
            playbook=r[1],
            target=r[2],
            state=RunState(r[3]),
            source=r[4],
            requested=float(r[5]),
            started=r[6],
            finished=r[7],
            would_run=bool(r[8]),
            disruptive=bool(r[9]),
        )
        for r in rows
    ]


def _summary(row: Any) -> dict[str, Any]:
    (rid, pb, target, source, mode, disr, state, step, would, gate, reason, trig, req, st, fin) = (
        row
    )
    return {
        "id": rid,
        "playbook": pb,
        "target": target,
        "source": source,
        "mode": mode,
        "disruptive": bool(disr),
        "state": state,
        "step": step,
        "would_run": bool(would),
        "gate": gate,
        "reason": reason,
        "trigger": json.loads(trig),
        "requested": _iso(req),
        "started": _iso(st),
        "finished": _iso(fin),
    }


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"
