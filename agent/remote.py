"""Remote commands in: verify, refuse replays, act, reply, and record every outcome.

:class:`RemoteCommands` is transport-free: MQTT (:mod:`agent.mqtt`) and the HTTP API hand
it raw payloads and send back what it returns. Each command is verified
(:func:`agent.commands.verify_command`), its nonce claimed in the store (a replay is
refused, also across restarts), and only then handed to the :class:`RemoteControl`
the runtime wires in (the remediation engine). Every outcome, accepted or refused, is
an event (``io.nodemedic.command.accepted`` / ``.rejected``) and a log line.

The retained ``fleet/pause`` message is state, not a one-off: the broker hands it to
every agent on every connect, so it is applied by its ``issued_at`` (a newer signed
pause or resume wins, an older or repeated one is ignored) instead of by nonce. The
newest one applied is persisted with the pause switch, so a restart does not apply the
same message again over a pause or resume made on the node since.
"""

from __future__ import annotations

__all__ = [
    "CommandReply",
    "ControlRequest",
    "IncomingCommand",
    "RemoteActionError",
    "RemoteCommands",
    "RemoteControl",
]

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.commands import (
    Command,
    CommandKind,
    CommandRejectedError,
    Rejection,
    TrustedKey,
    verify_command,
)
from agent.errors import AgentError, StoreError

log = logging.getLogger(__name__)


class RemoteActionError(AgentError):
    """Raised by a :class:`RemoteControl` when a verified command cannot be carried out.

    Attributes:
        reason: machine-readable (``unknown_playbook``, ``unknown_run``, ``not_remote``...).
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(detail)


class RemoteControl(Protocol):
    """What verified commands act on; the runtime adapts the remediation engine to it."""

    def run_playbook(
        self, playbook: str, target: str | None, params: Mapping[str, Any], *, by: str
    ) -> str:
        """Request a run; returns its id. Raises RemoteActionError."""
        ...

    def approve(self, run_id: str, *, by: str) -> None:
        """Approve a waiting run. Raises RemoteActionError."""
        ...

    def set_paused(
        self, paused: bool, *, by: str, until: float | None, fleet_issued_at: int | None = None
    ) -> None:
        """Pause (until ``until``, epoch seconds, or indefinitely) or resume remediation.

        ``fleet_issued_at`` is the ``issued_at`` of the retained fleet pause being applied:
        kept with the switch, so that after a restart the broker's redelivery of the same
        message does not undo a change made on the node since.
        """
        ...

    def fleet_pause_issued(self) -> int | None:
        """The ``issued_at`` of the newest retained fleet pause applied here, kept across
        restarts; None when there was none."""
        ...

    def reset_breaker(self, playbook: str, *, by: str) -> None:
        """Close a playbook's open breaker. Raises RemoteActionError."""
        ...

    def status(self) -> Mapping[str, Any]:
        """A fresh status summary for the reply."""
        ...


class NonceCache(Protocol):
    """The persisted record of accepted nonces (:meth:`agent.store.Store.claim_nonce`)."""

    def claim_nonce(self, key_id: str, nonce: str, *, expires_at: float, now: float) -> bool:
        """Record the nonce; False when it was already there. Durable after :meth:`commit`."""
        ...

    def commit(self) -> None:
        """Make the claims (and events) recorded so far durable; raises StoreError."""
        ...


@dataclass(frozen=True, slots=True)
class IncomingCommand:
    """A command as a transport received it.

    Attributes:
        payload: the raw bytes.
        via: where it came from, for the record (``mqtt:<topic>``, ``http``).
        retained: a retained MQTT message (only ``fleet/pause`` is read as state).
        fleet: it came on ``fleet/commands``, where a selector that leaves this node out
            is the sender's intent, not an error: such a command is dropped unanswered.
        response_topic: MQTT 5 response topic, where the reply goes.
        correlation_data: MQTT 5 correlation data, echoed in the reply.
    """

    payload: bytes
    via: str
    retained: bool = False
    fleet: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """An authorised request, from a signed command or an HTTP token, ready to carry out.

    Attributes:
        kind: what is asked.
        principal: the key id or token name that authorised it.
        issuer: who asked (the command's issuer, or the token's name).
        playbook: for run and reset_breaker.
        target: for run.
        params: for run.
        run_id: for approve.
        nonce: the signed command's nonce, if any.
    """

    kind: CommandKind
    principal: str
    issuer: str
    playbook: str | None = None
    target: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    nonce: str | None = None

    @classmethod
    def of(cls, command: Command) -> ControlRequest:
        """The request a verified command makes."""
        return cls(
            kind=command.kind,
            principal=command.key_id,
            issuer=command.issuer,
            playbook=command.playbook,
            target=command.target,
            params=command.params,
            run_id=command.run_id,
            nonce=command.nonce,
        )

    @property
    def by(self) -> str:
        """Who, as runs and pauses record it."""
        return f"{self.issuer} ({self.principal})"


@dataclass(frozen=True, slots=True)
class CommandReply:
    """The outcome of one command, as the reply carries it.

    Attributes:
        ok: it was accepted and carried out (a run was requested, a pause applied).
        node: this node.
        reason: ``accepted`` or why not.
        detail: what exactly happened or was wrong.
        run_id: the requested run, for ``run`` commands.
        nonce: the command's nonce, when it could be read, so a sender can match replies.
        status: the status summary, for ``status`` commands.
    """

    ok: bool
    node: str
    reason: str
    detail: str
    run_id: str | None = None
    nonce: str | None = None
    status: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """The reply's wire form."""
        body: dict[str, Any] = {
            "ok": self.ok,
            "node": self.node,
            "reason": self.reason,
            "detail": self.detail,
        }
        for name in ("run_id", "nonce"):
            if getattr(self, name) is not None:
                body[name] = getattr(self, name)
        if self.status:
            body["status"] = dict(self.status)
        return json.dumps(body, separators=(",", ":"), default=str).encode()


Emit = Callable[[str, str | None, Mapping[str, Any]], None]


class RemoteCommands:
    """Verifies and carries out remote commands for one node.

    Args:
        node: this node's name.
        labels: this node's labels (for selectors).
        keys: trusted keys by id.
        nonces: the persisted nonce cache.
        control: what commands act on.
        emit: records an event (type, subject, data).
        clock: epoch seconds.
        max_skew: seconds a command may be dated in the future.
        max_lifetime: longest ``expires_at - issued_at`` of a command.
        max_pause: longest lifetime of a retained fleet pause.
    """

    def __init__(
        self,
        *,
        node: str,
        labels: Mapping[str, str],
        keys: Mapping[str, TrustedKey],
        nonces: NonceCache,
        control: RemoteControl,
        emit: Emit,
        clock: Callable[[], float],
        max_skew: float,
        max_lifetime: float,
        max_pause: float,
    ) -> None:
        self._node = node
        self._labels = dict(labels)
        self._keys = dict(keys)
        self._nonces = nonces
        self._control = control
        self._emit = emit
        self._clock = clock
        self._max_skew = max_skew
        self._max_lifetime = max_lifetime
        self._max_pause = max_pause
        self._fleet_pause_issued: int | None = None  # read from the control when first needed

    def handle(self, incoming: IncomingCommand) -> CommandReply | None:
        """Verify and carry out one command.

        Returns:
            The reply, or None when none is due: a fleet pause already applied, or a
            fleet command whose selector leaves this node out.
        """
        now = self._clock()
        fleet_state = incoming.retained
        try:
            signed = verify_command(
                incoming.payload,
                keys=self._keys,
                node=self._node,
                labels=self._labels,
                now=now,
                max_skew=self._max_skew,
                max_lifetime=self._max_pause if fleet_state else self._max_lifetime,
            )
            command = signed.command
            if fleet_state:
                return self._apply_fleet_pause(command, incoming)
            self._claim(command, now)
        except CommandRejectedError as err:
            if incoming.fleet and err.reason is Rejection.WRONG_NODE:
                # Signed, in date, for other nodes: every node not selected would
                # otherwise answer (and record) a refusal for each fleet command.
                log.debug("fleet command %s is not for this node", err.nonce)
                return None
            return self._rejected(err, incoming)
        except StoreError as err:
            # Without the nonce cache a replay cannot be told apart: refuse.
            log.error("cannot check a command's nonce: %s", err)
            return self._refused("store_unavailable", str(err), incoming, None)
        request = ControlRequest.of(command)
        reply = self.carry_out(request, incoming)
        try:
            # The claim and the outcome event commit together, before the reply can
            # tell anyone the command was taken: a crash first loses every trace of it.
            self._nonces.commit()
        except StoreError as err:
            log.error("cannot record a command's nonce: %s", err)
            return self._refused("store_unavailable", str(err), incoming, request)
        return reply

    def _claim(self, command: Command, now: float) -> None:
        if not self._nonces.claim_nonce(
            command.key_id, command.nonce, expires_at=command.expires_at, now=now
        ):
            raise CommandRejectedError(
                Rejection.REPLAYED,
                f"nonce {command.nonce} of key {command.key_id!r} was already used",
                key_id=command.key_id,
                nonce=command.nonce,
            )

    def carry_out(self, request: ControlRequest, incoming: IncomingCommand) -> CommandReply:
        """Carry out an authorised request; the outcome is an event and the reply.

        The signed path calls it after verification; the HTTP API after checking a
        bearer token's policy.
        """
        by = request.by
        run_id: str | None = None
        status: Mapping[str, Any] = {}
        try:
            match request.kind:
                case CommandKind.RUN:
                    run_id = self._control.run_playbook(
                        _required(request.playbook, "playbook"),
                        request.target,
                        request.params,
                        by=by,
                    )
                    detail = f"run {run_id} of {request.playbook} requested"
                case CommandKind.APPROVE:
                    self._control.approve(_required(request.run_id, "run_id"), by=by)
                    detail = f"run {request.run_id} approved"
                case CommandKind.PAUSE:
                    self._control.set_paused(True, by=by, until=None)
                    detail = "remediation paused"
                case CommandKind.RESUME:
                    self._control.set_paused(False, by=by, until=None)
                    detail = "remediation resumed"
                case CommandKind.RESET_BREAKER:
                    self._control.reset_breaker(_required(request.playbook, "playbook"), by=by)
                    detail = f"breaker of {request.playbook} reset"
                case CommandKind.STATUS:
                    status = self._control.status()
                    detail = "status"
        except RemoteActionError as err:
            return self._refused(err.reason, err.detail, incoming, request)
        self._record("io.nodemedic.command.accepted", "accepted", detail, incoming, request)
        return CommandReply(
            ok=True,
            node=self._node,
            reason="accepted",
            detail=detail,
            run_id=run_id,
            nonce=request.nonce,
            status=status,
        )

    def _apply_fleet_pause(
        self, command: Command, incoming: IncomingCommand
    ) -> CommandReply | None:
        if command.kind not in (CommandKind.PAUSE, CommandKind.RESUME):
            return self._refused(
                "malformed",
                "the retained fleet pause must be a pause or resume",
                incoming,
                ControlRequest.of(command),
            )
        if self._fleet_pause_issued is None:
            applied = self._control.fleet_pause_issued()
            self._fleet_pause_issued = -1 if applied is None else applied
        if command.issued_at <= self._fleet_pause_issued:
            log.info(
                "retained fleet %s issued at %d ignored: one issued at %d was applied already",
                command.kind.value,
                command.issued_at,
                self._fleet_pause_issued,
            )
            return None
        paused = command.kind is CommandKind.PAUSE
        request = ControlRequest.of(command)
        until = float(command.expires_at) if paused else None
        self._control.set_paused(
            paused, by=f"{request.by}, fleet", until=until, fleet_issued_at=command.issued_at
        )
        self._fleet_pause_issued = command.issued_at
        detail = "fleet pause applied" if paused else "fleet pause lifted"
        self._record("io.nodemedic.command.accepted", "accepted", detail, incoming, request)
        return CommandReply(
            ok=True, node=self._node, reason="accepted", detail=detail, nonce=command.nonce
        )

    def _rejected(self, err: CommandRejectedError, incoming: IncomingCommand) -> CommandReply:
        log.warning("remote command via %s refused: %s", incoming.via, err)
        data: dict[str, Any] = {
            "via": incoming.via,
            "reason": err.reason.value,
            "detail": err.detail,
        }
        if err.key_id is not None:
            data["key_id"] = err.key_id
        if err.nonce is not None:
            data["nonce"] = err.nonce
        self._emit("io.nodemedic.command.rejected", err.key_id, data)
        return CommandReply(
            ok=False, node=self._node, reason=err.reason.value, detail=err.detail, nonce=err.nonce
        )

    def refuse(
        self, reason: str, detail: str, incoming: IncomingCommand, command: ControlRequest | None
    ) -> CommandReply:
        """Record a request refused before it could be carried out; the reply says why."""
        return self._refused(reason, detail, incoming, command)

    def _refused(
        self, reason: str, detail: str, incoming: IncomingCommand, command: ControlRequest | None
    ) -> CommandReply:
        log.warning("remote command via %s not carried out (%s): %s", incoming.via, reason, detail)
        self._record("io.nodemedic.command.rejected", reason, detail, incoming, command)
        return CommandReply(
            ok=False,
            node=self._node,
            reason=reason,
            detail=detail,
            nonce=command.nonce if command is not None else None,
        )

    def _record(
        self,
        type_: str,
        reason: str,
        detail: str,
        incoming: IncomingCommand,
        command: ControlRequest | None,
    ) -> None:
        data: dict[str, Any] = {"via": incoming.via, "reason": reason, "detail": detail}
        if command is not None:
            data |= {
                "kind": command.kind.value,
                "principal": command.principal,
                "issuer": command.issuer,
            }
            if command.nonce is not None:
                data["nonce"] = command.nonce
            if command.playbook is not None:
                data["playbook"] = command.playbook
            if command.target is not None:
                data["target"] = command.target
        if type_.endswith(".accepted"):
            # A status query changes nothing and comes to every node of a fleet at once:
            # its event is the record; the log keeps the commands that act.
            level = (
                logging.DEBUG
                if command is not None and command.kind is CommandKind.STATUS
                else logging.INFO
            )
            log.log(level, "remote command via %s: %s", incoming.via, detail)
        self._emit(type_, command.principal if command is not None else None, data)


def _required(value: str | None, name: str) -> str:
    # verify_command has checked it; this keeps the types honest without an assert.
    if value is None:
        raise RemoteActionError("malformed", f"the command has no {name}")
    return value
