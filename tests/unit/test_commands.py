"""Signed commands: what verifies, and the exact reason for everything that does not."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.commands import (
    MAX_COMMAND_BYTES,
    Command,
    CommandKind,
    CommandRejectedError,
    KeyPolicy,
    Rejection,
    Selector,
    TrustedKey,
    canonical_bytes,
    command_params,
    generate_keypair,
    load_private_key,
    load_public_key,
    new_nonce,
    sign_command,
    verify_command,
)

NOW = 1_800_000_000
OPERATOR = Ed25519PrivateKey.generate()
KEYS = {
    "ops": TrustedKey(
        id="ops",
        public_key=OPERATOR.public_key(),
        policy=KeyPolicy(playbooks=("restart-*",), params=frozenset({"unit"}), pause=True),
    )
}


def _command(**overrides: Any) -> Command:
    fields: dict[str, Any] = {
        "key_id": "ops",
        "issuer": "alice@example.org",
        "selector": {"nodes": ["web-*"]},
        "kind": "run",
        "playbook": "restart-failed-unit",
        "target": "nginx.service",
        "params": {"unit": "nginx.service"},
        "issued_at": NOW,
        "expires_at": NOW + 60,
        "nonce": new_nonce(),
    }
    fields.update(overrides)
    return Command.model_validate(fields)


def _verify(payload: bytes, *, node: str = "web-1", now: float = NOW) -> Command:
    return verify_command(
        payload,
        keys=KEYS,
        node=node,
        labels={"rack": "a"},
        now=now,
        max_skew=30,
        max_lifetime=3600,
    ).command


def _reason(payload: bytes, **kwargs: Any) -> Rejection:
    with pytest.raises(CommandRejectedError) as caught:
        _verify(payload, **kwargs)
    return caught.value.reason


def test_a_signed_command_verifies_and_keeps_every_field() -> None:
    command = _command()
    assert _verify(sign_command(command, OPERATOR)) == command


def test_the_signature_covers_canonical_bytes_whatever_the_key_order() -> None:
    command = _command()
    body = json.loads(sign_command(command, OPERATOR))
    reordered = dict(reversed(list(body["command"].items())))
    payload = json.dumps({"signature": body["signature"], "command": reordered}, indent=2)
    assert _verify(payload.encode()) == command
    assert canonical_bytes({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


def _tampered(field: str, value: Any) -> bytes:
    body = json.loads(sign_command(_command(), OPERATOR))
    body["command"][field] = value
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("field", "value"),
    [("playbook", "restart-all"), ("target", "sshd.service"), ("expires_at", NOW + 3000)],
)
def test_a_tampered_field_breaks_the_signature(field: str, value: Any) -> None:
    assert _reason(_tampered(field, value)) is Rejection.BAD_SIGNATURE


def test_a_command_signed_by_an_untrusted_key_is_refused() -> None:
    stranger = Ed25519PrivateKey.generate()
    assert _reason(sign_command(_command(), stranger)) is Rejection.BAD_SIGNATURE
    assert _reason(sign_command(_command(key_id="mallory"), stranger)) is Rejection.UNKNOWN_KEY


def test_time_window_expired_future_and_overlong() -> None:
    payload = sign_command(_command(), OPERATOR)
    assert _reason(payload, now=NOW + 60) is Rejection.EXPIRED
    assert _reason(payload, now=NOW - 31) is Rejection.NOT_YET_VALID
    assert _verify(payload, now=NOW - 29).nonce  # within the allowed skew
    overlong = _command(expires_at=NOW + 7200)
    with pytest.raises(CommandRejectedError, match="lifetime 7200s exceeds 3600s"):
        _verify(sign_command(overlong, OPERATOR))


def test_the_wrong_node_or_labels_are_refused() -> None:
    assert _reason(sign_command(_command(), OPERATOR), node="db-1") is Rejection.WRONG_NODE
    by_label = _command(selector={"labels": {"rack": "b"}})
    assert _reason(sign_command(by_label, OPERATOR)) is Rejection.WRONG_NODE
    assert Selector(nodes=("db-*", "web-?"), labels={"rack": "a"}).matches("web-1", {"rack": "a"})


def test_the_key_policy_limits_playbooks_params_approvals_and_pausing() -> None:
    cases = {
        Rejection.NOT_ALLOWED: [
            _command(playbook="drain-node"),
            _command(kind="approve", run_id="r1", playbook=None),
        ],
        Rejection.INVALID_PARAMS: [_command(params={"unit": "a", "force": True})],
    }
    for reason, commands in cases.items():
        for command in commands:
            assert _reason(sign_command(command, OPERATOR)) is reason, command
    pause = _command(kind="pause", playbook=None, target=None, params={})
    assert _verify(sign_command(pause, OPERATOR)).kind is CommandKind.PAUSE


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[]", 'exactly "command" and "signature"'),
        (b'{"command": {}, "signature": 5}', "signature is not a string"),
        (b'{"command": {}, "signature": "!!"}', "signature is not base64"),
        (b'{"command": {"nonce": 1.5}, "signature": ""}', "floats have no canonical form"),
        (b'{"command": {"key_id": "ops"}, "signature": ""}', "command.issuer: Field required"),
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        (b'{"command": {}, "signature": "AB=="}', "signature is not canonical base64"),
    ],
)
def test_malformed_payloads_name_what_is_wrong(payload: bytes, fragment: str) -> None:
    with pytest.raises(CommandRejectedError, match=fragment) as caught:
        _verify(payload)
    assert caught.value.reason is Rejection.MALFORMED


def test_an_oversized_payload_is_refused_unread() -> None:
    assert _reason(b" " * (MAX_COMMAND_BYTES + 1)) is Rejection.TOO_LARGE


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=200),
        _json.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(st.sampled_from(sorted(Command.model_fields)), _json, max_size=12).map(
            lambda c: json.dumps({"command": c, "signature": "AAAA"}).encode()
        ),
    )
)
def test_no_payload_raises_anything_but_a_rejection(body: bytes) -> None:
    with pytest.raises(CommandRejectedError):
        _verify(body)


def test_generated_keys_sign_commands_the_agent_accepts(tmp_path: Path) -> None:
    key_path, pub_path = generate_keypair(tmp_path / "keys", "ops")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    private = load_private_key(key_path)
    keys = {"ops": TrustedKey("ops", load_public_key(pub_path.read_text()), KEYS["ops"].policy)}
    command = verify_command(
        sign_command(_command(), private),
        keys=keys,
        node="web-1",
        labels={},
        now=NOW,
        max_skew=0,
        max_lifetime=60,
    ).command
    assert command.playbook == "restart-failed-unit"
    with pytest.raises(FileExistsError):
        generate_keypair(tmp_path / "keys", "ops")
    with pytest.raises(ValueError, match="32 bytes"):
        load_public_key(base64.b64encode(b"short").decode())


def test_command_line_params() -> None:
    assert command_params(["unit=a.service", "x=1=2"]) == {"unit": "a.service", "x": "1=2"}
    with pytest.raises(ValueError, match="'oops' is not NAME=VALUE"):
        command_params(["oops"])
