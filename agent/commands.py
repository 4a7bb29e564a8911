"""Signed remote commands: the envelope, its canonical bytes, signing and verification.

A command travels as JSON ``{"command": {...}, "signature": "<base64>"}``. The signature
is Ed25519 over the canonical serialisation of ``command``: UTF-8 JSON with keys sorted,
no insignificant whitespace and no floats (RFC 8785 JCS for the types a command may
carry), so signer and verifier agree byte for byte whatever JSON library either uses.

:func:`verify_command` checks, in this order, so the reason names the first thing wrong:
size, shape, key, signature, time window, target node, then the key's policy. Replays are
the nonce cache's job (:mod:`agent.nonces`), which runs only on a command that passed
all of these, so a forged command can never fill the cache.
"""

from __future__ import annotations

__all__ = [
    "MAX_COMMAND_BYTES",
    "Command",
    "CommandKind",
    "CommandRejectedError",
    "KeyPolicy",
    "Rejection",
    "Selector",
    "SignedCommand",
    "TrustedKey",
    "canonical_bytes",
    "check_policy",
    "command_params",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "new_nonce",
    "sign_command",
    "verify_command",
]

import base64
import binascii
import enum
import fnmatch
import json
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from agent.errors import AgentError

if TYPE_CHECKING:
    # cryptography costs about 7.5 MB of resident memory: imported only when a key is
    # loaded, generated or used (remote commands configured), not by every agent.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

MAX_COMMAND_BYTES = 16 * 1024
"""Largest command payload read at all; anything bigger is rejected unparsed."""

ParamValue = StrictStr | StrictInt | StrictBool
"""Command parameters are strings, integers or booleans: no floats, so the canonical form
is unambiguous, and no nesting, so a policy can name every parameter."""

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"


class Rejection(enum.StrEnum):
    """Why a command was refused; the ``reason`` of the reply and the rejection event."""

    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    REPLAYED = "replayed"
    WRONG_NODE = "wrong_node"
    NOT_ALLOWED = "not_allowed"
    INVALID_PARAMS = "invalid_params"


class CommandRejectedError(AgentError):
    """Raised when a remote command fails verification or its key's policy.

    Attributes:
        reason: the machine-readable reason.
        detail: what exactly was wrong, for the reply, the event and the log.
        key_id: the key the command named, when it could be read.
        nonce: the command's nonce, when it could be read.
    """

    def __init__(
        self, reason: Rejection, detail: str, *, key_id: str | None = None, nonce: str | None = None
    ) -> None:
        self.reason = reason
        self.detail = detail
        self.key_id = key_id
        self.nonce = nonce
        super().__init__(f"command rejected ({reason.value}): {detail}")


class CommandKind(enum.StrEnum):
    """What a command asks for."""

    RUN = "run"
    APPROVE = "approve"
    PAUSE = "pause"
    RESUME = "resume"
    RESET_BREAKER = "reset_breaker"
    STATUS = "status"


class _Strict(BaseModel):
    # Scalars are Strict* types; the models stay lax so JSON objects become sub-models.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Selector(_Strict):
    """Which nodes a command is for: every listed criterion must match.

    Attributes:
        nodes: node names or shell-style globs (``web-*``); empty means any name.
        labels: node labels that must all be equal.
    """

    nodes: tuple[Annotated[str, Field(min_length=1, max_length=253)], ...] = Field(
        default=(), max_length=256
    )
    labels: dict[str, str] = Field(default_factory=dict, max_length=32)

    def matches(self, node: str, labels: Mapping[str, str]) -> bool:
        """True when ``node`` with ``labels`` is selected."""
        if self.nodes and not any(fnmatch.fnmatchcase(node, pattern) for pattern in self.nodes):
            return False
        return all(labels.get(name) == value for name, value in self.labels.items())


class Command(_Strict):
    """The signed part of a remote command.

    Attributes:
        version: envelope version, 1.
        key_id: the trusted key that signed it.
        issuer: who issued it (a person or system), recorded with every outcome.
        selector: the nodes it is for.
        kind: run a playbook, approve a run, pause, resume, reset a breaker, status.
        playbook: for ``run`` and ``reset_breaker``.
        target: for ``run``: what the playbook acts on (a unit, a mountpoint...).
        run_id: for ``approve``.
        params: for ``run``: playbook parameters.
        issued_at: epoch seconds it was signed.
        expires_at: epoch seconds after which it must not run.
        nonce: unique per command; a second command with the same key and nonce is a replay.
    """

    version: StrictInt = Field(default=1, ge=1, le=1)
    key_id: StrictStr = Field(pattern=_NAME)
    issuer: StrictStr = Field(min_length=1, max_length=200)
    selector: Selector
    kind: CommandKind
    playbook: StrictStr | None = Field(default=None, pattern=_NAME)
    target: StrictStr | None = Field(default=None, min_length=1, max_length=512)
    run_id: StrictStr | None = Field(default=None, pattern=_NAME)
    params: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")], ParamValue] = Field(
        default_factory=dict, max_length=32
    )
    issued_at: StrictInt = Field(ge=0)
    expires_at: StrictInt = Field(ge=0)
    nonce: StrictStr = Field(pattern=r"^[A-Za-z0-9_-]{16,128}$")

    def canonical(self) -> bytes:
        """The bytes the signature covers."""
        # No float walk: every scalar field is a Strict int, str or bool, so a validated
        # command cannot hold one (the received JSON was walked before validation).
        return _canonical_json(self.model_dump(mode="json", exclude_none=True))


@dataclass(frozen=True, slots=True)
class SignedCommand:
    """A command that passed signature, time, node and policy checks (not yet the nonce)."""

    command: Command
    key: TrustedKey


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """What a key may do.

    Attributes:
        playbooks: playbook names or globs it may run (and reset the breaker of).
        params: parameter names it may set; empty allows none.
        approve: it may approve waiting runs.
        pause: it may pause and resume remediation (locally or fleet-wide).
    """

    playbooks: tuple[str, ...] = ()
    params: frozenset[str] = frozenset()
    approve: bool = False
    pause: bool = False

    def allows_playbook(self, name: str) -> bool:
        """True when ``name`` matches one of the allowed playbook patterns."""
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.playbooks)


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A public key the agent accepts commands from, with its policy."""

    id: str
    public_key: Ed25519PublicKey
    policy: KeyPolicy


def canonical_bytes(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, UTF-8, no floats.

    Raises:
        ValueError: when ``value`` holds a float (its text form is not canonical).
    """
    _refuse_floats(value)
    return _canonical_json(value)


def _canonical_json(value: Any) -> bytes:
    return _CANONICAL_ENCODER.encode(value).encode("utf-8")


# One encoder for every command: json.dumps builds a new one whenever it is given options.
_CANONICAL_ENCODER: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


_SCALARS: Final = frozenset({str, int, bool, type(None)})


def _refuse_floats(value: Any) -> None:
    # Every received command is walked: exact type checks first (what JSON decodes to),
    # the abstract-class checks only for other containers a caller may hand in.
    kind = type(value)
    if kind in _SCALARS:
        return
    items: Iterable[Any]
    if kind is dict:
        items = value.values()
    elif kind is list or kind is tuple:
        items = value
    elif isinstance(value, float):
        # A value error, not a type error: the float came from input, not from our code.
        raise ValueError("floats have no canonical form in a command; use an integer or string")
    elif isinstance(value, Mapping):
        items = value.values()
    elif isinstance(value, list | tuple):
        items = value
    else:
        return
    for item in items:
        if type(item) not in _SCALARS:
            _refuse_floats(item)


def sign_command(command: Command, private_key: Ed25519PrivateKey) -> bytes:
    """The wire form of ``command`` signed by ``private_key``."""
    signature = private_key.sign(command.canonical())
    body = {
        "command": command.model_dump(mode="json", exclude_none=True),
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def verify_command(
    payload: bytes,
    *,
    keys: Mapping[str, TrustedKey],
    node: str,
    labels: Mapping[str, str],
    now: float,
    max_skew: float,
    max_lifetime: float,
) -> SignedCommand:
    """Check a received command up to, not including, its nonce.

    Args:
        payload: the raw bytes received.
        keys: trusted keys by id.
        node: this node's name.
        labels: this node's labels.
        now: epoch seconds.
        max_skew: seconds a command may be dated in the future (clock skew).
        max_lifetime: seconds ``expires_at - issued_at`` may span at most.

    Raises:
        CommandRejectedError: naming the first thing wrong.
    """
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandRejectedError(
            Rejection.TOO_LARGE, f"{len(payload)} bytes, at most {MAX_COMMAND_BYTES} are read"
        )
    command, signature = _parse(payload)
    ids = {"key_id": command.key_id, "nonce": command.nonce}
    key = keys.get(command.key_id)
    if key is None:
        raise CommandRejectedError(
            Rejection.UNKNOWN_KEY, f"key {command.key_id!r} is not trusted", **ids
        )
    from cryptography.exceptions import InvalidSignature  # loaded with the key already

    try:
        key.public_key.verify(signature, command.canonical())
    except InvalidSignature:
        raise CommandRejectedError(
            Rejection.BAD_SIGNATURE,
            f"signature does not match the command under key {command.key_id!r}",
            **ids,
        ) from None
    _check_time(command, now=now, max_skew=max_skew, max_lifetime=max_lifetime, ids=ids)
    if not command.selector.matches(node, labels):
        raise CommandRejectedError(
            Rejection.WRONG_NODE, f"selector does not match node {node!r}", **ids
        )
    check_policy(
        command.kind,
        playbook=command.playbook,
        params=command.params,
        run_id=command.run_id,
        policy=key.policy,
        who=f"key {command.key_id!r}",
        ids=ids,
    )
    return SignedCommand(command=command, key=key)


def _parse(payload: bytes) -> tuple[Command, bytes]:
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CommandRejectedError(Rejection.MALFORMED, f"not JSON: {err}") from None
    except RecursionError:
        raise CommandRejectedError(Rejection.MALFORMED, _TOO_DEEP) from None
    if not isinstance(body, dict) or set(body) != {"command", "signature"}:
        raise CommandRejectedError(
            Rejection.MALFORMED, 'expected an object with exactly "command" and "signature"'
        )
    raw_signature = body["signature"]
    if not isinstance(raw_signature, str):
        raise CommandRejectedError(Rejection.MALFORMED, "signature is not a string")
    try:
        signature = base64.b64decode(raw_signature, validate=True)
    except (ValueError, binascii.Error) as err:
        raise CommandRejectedError(Rejection.MALFORMED, f"signature is not base64: {err}") from None
    if base64.b64encode(signature).decode("ascii") != raw_signature:
        # The decoder ignores a last character's spare bits: one signature, one spelling.
        raise CommandRejectedError(Rejection.MALFORMED, "signature is not canonical base64")
    try:
        _refuse_floats(body["command"])
        command = Command.model_validate(body["command"])
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "command"
        raise CommandRejectedError(
            Rejection.MALFORMED, f"command.{where}: {first['msg']}"
        ) from None
    except ValueError as err:
        raise CommandRejectedError(Rejection.MALFORMED, f"command: {err}") from None
    except RecursionError:
        raise CommandRejectedError(Rejection.MALFORMED, _TOO_DEEP) from None
    return command, signature


# A command is at most three levels deep; far deeper input exhausts the (recursive) JSON
# decoder or the float check and must be a refusal like any other, not a crash.
_TOO_DEEP = "nested too deeply to be a command"


def _check_time(
    command: Command, *, now: float, max_skew: float, max_lifetime: float, ids: dict[str, str]
) -> None:
    if command.expires_at <= command.issued_at:
        raise CommandRejectedError(Rejection.MALFORMED, "expires_at must be after issued_at", **ids)
    if command.expires_at - command.issued_at > max_lifetime:
        raise CommandRejectedError(
            Rejection.MALFORMED,
            f"lifetime {command.expires_at - command.issued_at}s exceeds {max_lifetime:g}s",
            **ids,
        )
    if command.issued_at > now + max_skew:
        raise CommandRejectedError(
            Rejection.NOT_YET_VALID,
            f"issued {command.issued_at - now:.0f}s in the future (allowed skew {max_skew:g}s)",
            **ids,
        )
    if now >= command.expires_at:
        raise CommandRejectedError(
            Rejection.EXPIRED, f"expired {now - command.expires_at:.0f}s ago", **ids
        )


def check_policy(
    kind: CommandKind,
    *,
    playbook: str | None,
    params: Mapping[str, object],
    run_id: str | None,
    policy: KeyPolicy,
    who: str,
    ids: Mapping[str, str] | None = None,
) -> None:
    """Check what a command asks for against the policy of the key or token ``who``.

    Raises:
        CommandRejectedError: MALFORMED when a needed field is missing, NOT_ALLOWED or
            INVALID_PARAMS when the policy does not cover it.
    """
    refs = dict(ids or {})
    if kind in (CommandKind.RUN, CommandKind.RESET_BREAKER):
        if playbook is None:
            raise CommandRejectedError(
                Rejection.MALFORMED, f"a {kind.value} command needs a playbook", **refs
            )
        if not policy.allows_playbook(playbook):
            raise CommandRejectedError(
                Rejection.NOT_ALLOWED, f"{who} may not run playbook {playbook!r}", **refs
            )
        extra = sorted(set(params) - policy.params)
        if extra:
            raise CommandRejectedError(
                Rejection.INVALID_PARAMS,
                f"{who} may not set parameter(s) {', '.join(extra)}",
                **refs,
            )
    elif kind is CommandKind.APPROVE:
        if run_id is None:
            raise CommandRejectedError(
                Rejection.MALFORMED, "an approve command needs a run_id", **refs
            )
        if not policy.approve:
            raise CommandRejectedError(Rejection.NOT_ALLOWED, f"{who} may not approve runs", **refs)
    elif kind in (CommandKind.PAUSE, CommandKind.RESUME) and not policy.pause:
        raise CommandRejectedError(Rejection.NOT_ALLOWED, f"{who} may not pause or resume", **refs)


def generate_keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (PKCS#8 PEM, mode 0600) and ``NAME.pub`` (raw key, base64).

    Raises:
        FileExistsError: when either file exists (a key is never overwritten).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    key_path = directory / f"{name}.key"
    pub_path = directory / f"{name}.pub"
    if key_path.exists() or pub_path.exists():
        raise FileExistsError(f"{key_path} or {pub_path} already exists; not overwriting a key")
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # O_EXCL and the mode at creation: the private key is never readable by others.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    pub_path.write_text(base64.b64encode(raw).decode("ascii") + "\n", encoding="ascii")
    return key_path, pub_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a key written by :func:`generate_keypair`.

    Raises:
        ValueError: when the file is not an Ed25519 private key.
        OSError: when it cannot be read.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")  # noqa: TRY004 (bad input file)
    return key


def load_public_key(text: str) -> Ed25519PublicKey:
    """Parse a public key: 32 raw bytes in base64, as ``NAME.pub`` holds them.

    Raises:
        ValueError: naming what is wrong with it.
    """
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (ValueError, binascii.Error) as err:
        raise ValueError(f"not base64: {err}") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, this is {len(raw)}")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(raw)


def new_nonce() -> str:
    """A random nonce for a new command."""
    return secrets.token_urlsafe(24)


def command_params(pairs: Sequence[str]) -> dict[str, str]:
    """Parse ``k=v`` pairs from the command line.

    Raises:
        ValueError: naming a pair without ``=``.
    """
    params: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"parameter {pair!r} is not NAME=VALUE")
        params[name] = value
    return params
