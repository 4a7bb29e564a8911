"""A command's nonce claim is durable before its reply, even with group commit deferring it.

The agent runs in a child process (a real store on a running event loop, so claims and
events join the deferred group) and is killed with SIGKILL right after it printed a
reply; the restarted store must refuse the same command as a replay and hold the
``command.accepted`` event. ``StatusOnly`` stands in for the remediation engine.
"""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.commands import Command, KeyPolicy, TrustedKey, new_nonce, sign_command
from agent.remote import IncomingCommand, RemoteCommands
from agent.store import Store

_CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from agent.commands import KeyPolicy, TrustedKey, load_public_key
    from agent.remote import IncomingCommand, RemoteCommands
    from agent.store import Store

    class StatusOnly:
        def status(self):
            return {"paused": False}

    async def main() -> None:
        store = Store.open(Path(sys.argv[1]), commit_delay=3600.0)  # only commit() commits
        key = TrustedKey("ops", load_public_key(sys.argv[2]), KeyPolicy())
        remote = RemoteCommands(
            node="web-1", labels={}, keys={"ops": key}, nonces=store, control=StatusOnly(),
            emit=lambda type_, subject, data: store.append_event(
                source="nodemedic://web-1", type=type_, subject=subject, data=data,
                time=time.time(), outbox=True),
            clock=time.time, max_skew=30, max_lifetime=600, max_pause=86_400,
        )
        reply = remote.handle(IncomingCommand(sys.stdin.buffer.readline().strip(), via="t"))
        print(reply.to_json().decode(), flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def _status_command(key: Ed25519PrivateKey) -> bytes:
    now = int(time.time())
    command = Command.model_validate(
        {
            "key_id": "ops",
            "issuer": "alice",
            "selector": {},
            "kind": "status",
            "issued_at": now,
            "expires_at": now + 300,
            "nonce": new_nonce(),
        }
    )
    return sign_command(command, key)


def test_a_command_replied_to_is_refused_as_a_replay_after_a_crash(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    payload = _status_command(key)
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db), base64.b64encode(public).decode()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as child:
        try:
            assert child.stdin is not None
            assert child.stdout is not None
            child.stdin.write(payload + b"\n")
            child.stdin.flush()
            reply = child.stdout.readline()
            assert b'"reason":"accepted"' in reply, reply
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)

    with Store.open(db) as store:
        [accepted] = store.events(type="io.nodemedic.command.accepted")
        assert [entry.sequence for entry in store.outbox_batch()] == [accepted.sequence]
        remote = RemoteCommands(
            node="web-1",
            labels={},
            keys={"ops": TrustedKey("ops", key.public_key(), KeyPolicy())},
            nonces=store,
            control=_Unused(),
            emit=lambda _type, _subject, _data: None,
            clock=time.time,
            max_skew=30,
            max_lifetime=600,
            max_pause=86_400,
        )
        again = remote.handle(IncomingCommand(payload, via="t"))
        assert again is not None
        assert (again.ok, again.reason) == (False, "replayed")


class _Unused:
    """A RemoteControl a refused replay never reaches."""

    def run_playbook(self, playbook: str, target: str | None, params: object, *, by: str) -> str:
        """Never called."""
        raise AssertionError("a replay ran a playbook")

    def approve(self, run_id: str, *, by: str) -> None:
        """Never called."""
        raise AssertionError("a replay approved a run")

    def set_paused(
        self, paused: bool, *, by: str, until: float | None, fleet_issued_at: int | None = None
    ) -> None:
        """Never called."""
        raise AssertionError("a replay paused")

    def fleet_pause_issued(self) -> int | None:
        """Never called."""
        raise AssertionError("a replay read the fleet pause")

    def reset_breaker(self, playbook: str, *, by: str) -> None:
        """Never called."""
        raise AssertionError("a replay reset a breaker")

    def status(self) -> dict[str, object]:
        """Never called."""
        raise AssertionError("a replay was answered")
