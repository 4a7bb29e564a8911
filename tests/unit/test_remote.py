"""Remote commands against the real SQLite store: replies, events, replays and the fleet pause.

``RecordingControl`` stands in for the remediation engine behind the ``RemoteControl``
protocol, recording what verified commands asked of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.commands import Command, KeyPolicy, TrustedKey, new_nonce, sign_command
from agent.remote import IncomingCommand, RemoteActionError, RemoteCommands
from agent.store import Store

NOW = 1_800_000_000.0
KEY = Ed25519PrivateKey.generate()
TRUSTED = {
    "ops": TrustedKey(
        "ops", KEY.public_key(), KeyPolicy(playbooks=("restart-*",), approve=True, pause=True)
    )
}


class RecordingControl:
    """Records what commands asked for; refuses the playbook ``restart-missing``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fleet_issued: int | None = None  # what the journal keeps across restarts

    def run_playbook(
        self, playbook: str, target: str | None, params: Mapping[str, Any], *, by: str
    ) -> str:
        """Return a run id, or refuse an unknown playbook."""
        if playbook == "restart-missing":
            raise RemoteActionError("unknown_playbook", f"no playbook named {playbook!r}")
        self.calls.append(("run", (playbook, target, dict(params), by)))
        return f"run-{len(self.calls)}"

    def approve(self, run_id: str, *, by: str) -> None:
        """Record the approval."""
        self.calls.append(("approve", run_id))

    def set_paused(
        self, paused: bool, *, by: str, until: float | None, fleet_issued_at: int | None = None
    ) -> None:
        """Record the pause state, and the fleet pause's mark if it was one."""
        self.calls.append(("paused", (paused, until)))
        if fleet_issued_at is not None:
            self.fleet_issued = fleet_issued_at

    def fleet_pause_issued(self) -> int | None:
        """The mark the last fleet pause left."""
        return self.fleet_issued

    def reset_breaker(self, playbook: str, *, by: str) -> None:
        """Record the reset."""
        self.calls.append(("reset", playbook))

    def status(self) -> Mapping[str, Any]:
        """A fixed status."""
        return {"paused": False}


class Harness:
    """A RemoteCommands over a real store, with the events it recorded."""

    def __init__(self, db: Path) -> None:
        self.store = Store.open(db)
        self.control = RecordingControl()
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.now = NOW
        self.remote = self.restarted()

    def restarted(self) -> RemoteCommands:
        """A new RemoteCommands over the same store and control, as after a restart."""
        return RemoteCommands(
            node="web-1",
            labels={},
            keys=TRUSTED,
            nonces=self.store,
            control=self.control,
            emit=lambda type_, _subject, data: self.events.append((type_, dict(data))),
            clock=lambda: self.now,
            max_skew=30,
            max_lifetime=600,
            max_pause=86_400,
        )


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path / "state.db")
    yield h
    h.store.close()


def _signed(kind: str = "run", **overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "key_id": "ops",
        "issuer": "alice",
        "selector": {"nodes": ["web-1"]},
        "kind": kind,
        "issued_at": int(NOW),
        "expires_at": int(NOW) + 60,
        "nonce": new_nonce(),
    }
    if kind == "run":
        fields |= {"playbook": "restart-failed-unit", "target": "nginx.service"}
    fields.update(overrides)
    return sign_command(Command.model_validate(fields), KEY)


def test_a_run_command_requests_a_run_and_replies_with_its_id(harness: Harness) -> None:
    reply = harness.remote.handle(IncomingCommand(_signed(), via="mqtt:commands"))

    assert reply is not None
    assert json.loads(reply.to_json()) | {"nonce": "-"} == {
        "ok": True,
        "node": "web-1",
        "reason": "accepted",
        "detail": "run run-1 of restart-failed-unit requested",
        "run_id": "run-1",
        "nonce": "-",
    }
    assert harness.control.calls == [
        ("run", ("restart-failed-unit", "nginx.service", {}, "alice (ops)"))
    ]
    [(type_, data)] = harness.events
    assert type_ == "io.nodemedic.command.accepted"
    assert data["playbook"] == "restart-failed-unit"
    assert data["issuer"] == "alice"


def test_a_replay_is_refused_also_after_a_restart(harness: Harness, tmp_path: Path) -> None:
    payload = _signed()
    assert harness.remote.handle(IncomingCommand(payload, via="http")) is not None
    again = harness.remote.handle(IncomingCommand(payload, via="http"))
    assert again is not None
    assert (again.ok, again.reason) == (False, "replayed")

    harness.store.close()
    restarted = Harness(tmp_path / "state.db")
    try:
        reply = restarted.remote.handle(IncomingCommand(payload, via="http"))
        assert reply is not None
        assert reply.reason == "replayed"
        assert restarted.control.calls == []
        assert restarted.events[0][0] == "io.nodemedic.command.rejected"
    finally:
        restarted.store.close()


def test_every_refusal_is_an_event_and_nothing_runs(harness: Harness) -> None:
    stranger = Ed25519PrivateKey.generate()
    foreign = sign_command(Command.model_validate(json.loads(_signed())["command"]), stranger)
    cases = {
        "bad_signature": foreign,
        "expired": _signed(issued_at=int(NOW) - 120, expires_at=int(NOW) - 60),
        "wrong_node": _signed(selector={"nodes": ["db-*"]}),
        "not_allowed": _signed(playbook="drain-node"),
        "unknown_playbook": _signed(playbook="restart-missing"),
        "malformed": b"{",
    }
    for reason, payload in cases.items():
        reply = harness.remote.handle(IncomingCommand(payload, via="mqtt:commands"))
        assert reply is not None
        assert (reply.ok, reply.reason) == (False, reason)
    assert harness.control.calls == []
    assert [t for t, _ in harness.events] == ["io.nodemedic.command.rejected"] * len(cases)
    assert [d["reason"] for _, d in harness.events] == list(cases)


def test_a_fleet_command_for_other_nodes_is_dropped_but_a_forged_one_is_refused(
    harness: Harness,
) -> None:
    other = _signed(selector={"nodes": ["db-*"]})
    assert harness.remote.handle(IncomingCommand(other, via="mqtt:fleet", fleet=True)) is None
    assert harness.events == []

    stranger = Ed25519PrivateKey.generate()
    forged = sign_command(Command.model_validate(json.loads(other)["command"]), stranger)
    reply = harness.remote.handle(IncomingCommand(forged, via="mqtt:fleet", fleet=True))
    assert reply is not None
    assert reply.reason == "bad_signature"
    assert harness.control.calls == []


def test_the_retained_fleet_pause_is_applied_by_issue_time(harness: Harness) -> None:
    pause = _signed("pause", expires_at=int(NOW) + 3600)
    retained = IncomingCommand(pause, via="mqtt:fleet/pause", retained=True)

    assert harness.remote.handle(retained) is not None
    assert harness.remote.handle(retained) is None  # the broker's redelivery on reconnect
    older = _signed("resume", issued_at=int(NOW) - 10)
    assert harness.remote.handle(IncomingCommand(older, via="x", retained=True)) is None
    harness.now += 5
    newer = _signed("resume", issued_at=int(NOW) + 5, expires_at=int(NOW) + 65)
    assert harness.remote.handle(IncomingCommand(newer, via="x", retained=True)) is not None

    assert harness.control.calls == [("paused", (True, NOW + 3600)), ("paused", (False, None))]


def test_a_restart_does_not_apply_the_same_fleet_pause_again(harness: Harness) -> None:
    resume = IncomingCommand(_signed("resume"), via="mqtt:fleet/pause", retained=True)
    assert harness.remote.handle(resume) is not None
    # Paused on the node since, by a command for it alone; then the agent restarts and
    # the broker hands it the same retained resume on connect.
    paused_here = harness.remote.handle(IncomingCommand(_signed("pause"), via="mqtt:commands"))
    assert paused_here is not None
    assert paused_here.ok
    after_restart = harness.restarted()

    assert after_restart.handle(resume) is None
    older = _signed("pause", issued_at=int(NOW) - 10, expires_at=int(NOW) + 3600)
    assert after_restart.handle(IncomingCommand(older, via="x", retained=True)) is None
    assert harness.control.calls == [("paused", (False, None)), ("paused", (True, None))]

    harness.now += 5
    newer = _signed("resume", issued_at=int(NOW) + 5, expires_at=int(NOW) + 65)
    assert after_restart.handle(IncomingCommand(newer, via="x", retained=True)) is not None
    assert harness.control.calls[-1] == ("paused", (False, None)), "a newer one still wins"
    assert harness.control.fleet_issued == int(NOW) + 5


def test_approve_status_and_breaker_reset(harness: Harness) -> None:
    approve = harness.remote.handle(IncomingCommand(_signed("approve", run_id="r7"), via="http"))
    status = harness.remote.handle(IncomingCommand(_signed("status"), via="http"))
    reset = harness.remote.handle(
        IncomingCommand(_signed("reset_breaker", playbook="restart-x"), via="http")
    )

    assert approve is not None
    assert status is not None
    assert reset is not None
    assert status.status == {"paused": False}
    assert harness.control.calls == [("approve", "r7"), ("reset", "restart-x")]
